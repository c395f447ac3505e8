"""Parallel vs serial staging of TFRecord shards from GCS (the emulator) to local disk.

On loopback the emulator answers in microseconds, which hides what parallel transfers are for:
real GCS answers each request in tens of milliseconds. ``--delay-ms`` puts a TCP relay between
client and emulator that holds every client-to-server chunk that long (netem is not available in
every sandbox, a relay is).

    python bench/staging.py [--files 32] [--mib 2] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

from _common import gcs_emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--mib", type=float, default=2.0)
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="delay added to each request on its way to the emulator")
    args = parser.parse_args()
    from trainer.run.storage import Storage

    with gcs_emulator(), tempfile.TemporaryDirectory() as tmp:
        if args.delay_ms:
            os.environ["STORAGE_EMULATOR_HOST"] = _delaying_relay(
                os.environ["STORAGE_EMULATOR_HOST"], args.delay_ms / 1000)
            print(f"(each request delayed {args.delay_ms:.0f} ms)")
        storage = Storage()
        storage.client.create_bucket("bench")
        src = Path(tmp) / "shard"
        src.write_bytes(os.urandom(int(args.mib * 2**20)))
        uris = [f"gs://bench/data/train-{i:05d}-of-{args.files:05d}" for i in range(args.files)]
        storage.upload_many([(src, u) for u in uris])
        total = args.files * args.mib
        results = {}
        for parallelism in (1, 8):
            storage.parallelism = parallelism
            start = time.perf_counter()
            storage.download_many(uris, Path(tmp) / f"p{parallelism}")
            results[parallelism] = time.perf_counter() - start
            print(f"parallelism {parallelism}: {results[parallelism]:6.2f} s  "
                  f"{total / results[parallelism]:7.1f} MiB/s")
        print(f"parallel / serial throughput: {results[1] / results[8]:.2f}x "
              f"({args.files} files x {args.mib} MiB)")


def _delaying_relay(upstream: str, delay: float) -> str:
    """Start a relay to ``upstream`` (http://host:port) in a thread; returns its URL."""
    host, port = upstream.removeprefix("http://").split(":")
    loop = asyncio.new_event_loop()
    ready: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   wait: float) -> None:
        while chunk := await reader.read(65536):
            if wait:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, 0.0),
                             return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True).start()
    while not ready:
        time.sleep(0.01)
    return f"http://127.0.0.1:{ready[0]}"


if __name__ == "__main__":
    main()
