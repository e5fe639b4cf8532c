"""Opens N keep-alive client connections to 127.0.0.1:PORT, sends one GET on each, reads the
whole response and then holds every socket open, idle.

Usage: idle_conns.py PORT N READY_FILE [HOLD_SECONDS]

Writes "ok <opened> failed <failed>" to READY_FILE once every connection is settled, then holds
them until it is terminated or HOLD_SECONDS (default 120) pass. Used by scripts/bench.sh to
measure a proxy's RSS per idle connection.
"""

import asyncio
import os
import resource
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"
BATCH = 500  # connections opened at once


async def open_one(port):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), timeout=10
    )
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"status {status!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await asyncio.wait_for(reader.readexactly(length), timeout=10)
    return writer


async def main(port, n, ready_file, hold):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    held, failed, errors = [], 0, {}
    for start in range(0, n, BATCH):
        results = await asyncio.gather(
            *(open_one(port) for _ in range(min(BATCH, n - start))),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
                errors[type(r).__name__] = errors.get(type(r).__name__, 0) + 1
            else:
                held.append(r)
    with open(ready_file + ".tmp", "w") as f:
        f.write(f"ok {len(held)} failed {failed} {errors or ''}\n")
    # Rename: the script polls for the file and must never read it half written.
    os.rename(ready_file + ".tmp", ready_file)
    await asyncio.sleep(hold)
    for w in held:
        w.close()


if __name__ == "__main__":
    port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    asyncio.run(main(port, n, ready, hold))
