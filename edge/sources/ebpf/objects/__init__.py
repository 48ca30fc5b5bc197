"""Compiled probe objects (*.bpf.o), produced by the package build from bpf/; not kept in git."""
