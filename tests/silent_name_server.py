"""Run a command where every host name lookup goes unanswered, as under a name server that never
replies: `unshare --user --map-root-user --mount --net python -m tests.silent_name_server CMD...`.

No root needed: in a network and mount namespace of its own, the system resolver's configuration
is emptied (glibc then asks a name server on loopback), and a UDP socket on loopback port 53 takes
every query and answers none. The command itself holds that socket, so nothing outlives it.
RES_OPTIONS (glibc's) sets how long the resolver keeps asking.
"""

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        asked = fcntl.ioctl(control, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, asked)[1]
        fcntl.ioctl(control, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def main() -> None:
    bring_loopback_up()
    mount = shutil.which("mount")
    assert mount is not None, "mount (util-linux, beside unshare) is missing"
    subprocess.run([mount, "--bind", "/dev/null", "/etc/resolv.conf"], check=True)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 53))
    silent.set_inheritable(True)
    os.execv(sys.argv[1], sys.argv[1:])  # noqa: S606 (the command, given as a path, keeps the socket)


if __name__ == "__main__":
    main()
