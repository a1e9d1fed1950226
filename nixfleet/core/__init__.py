"""Pure, sans-IO cores: every decision the daemons, the simulator and the harness share.

Nothing here touches sockets, files, subprocesses, the clock or global randomness;
`now` and any RNG are arguments.
"""
