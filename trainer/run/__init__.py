"""The run, whatever is trained: the cluster and its peers, storage, staging, checkpoints and the
training loop that every task shares."""
