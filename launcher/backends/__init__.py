"""Where jobs run, behind one interface (``base.Backend``): ``kubernetes.KubernetesBackend`` (a
cluster) and ``local.LocalBackend`` (processes on this machine, ``launcher run-local``)."""
