"""The client side of a rented instance: SSH sessions, file sync, event following, environment bootstrap.

    transport.py  the Transport protocol both sides implement, shared shell text (wrapped and detached commands)
    session.py    SshSession: asyncssh connect (retries, deadline, host-key pinning), run, stream, detach, files
    sftp.py       the session's SFTP file channel (stat, atomic upload, download, listing)
    local.py      LocalTransport: the same interface on this machine, for --provider local
    keys.py       per-run ed25519 key pair and known_hosts pins in the state dir
    sync.py       push / pull / fetch_verified (sha256); rsync when possible, SFTP or plain copies otherwise
    rsync.py      rsync argv, progress and stats parsing, failure classification
    excludes.py   default excludes, .gpurunignore, rsync-style matching, the dry run's upload plan
    progress.py   a rich bar (or plain lines without a TTY) fed by the transfers' progress callback
    follow.py     follow the runner's JSON-lines events from a byte offset, across reconnects
    bootstrap.py  ship and run templates/bootstrap.sh, parse its progress, validate --base early

Nothing here imports gpurun.provision; job.py composes the two.
"""
