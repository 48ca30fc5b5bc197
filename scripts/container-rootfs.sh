#!/bin/sh
# Used by the Dockerfile's rootfs stage: copies into ROOT only the files the images run on — the shared libraries
# of the Debian packages below, CPython 3.11 and its standard library (less what the agent and gateway never load),
# the CA bundle, and users root and helix (10001). libstdc++ is there because manylinux wheels (grpcio,
# protobuf's upb) link it rather than carry it. No shell, no package manager (docs/benchmarks.md, container images).
#   container-rootfs.sh ROOT
set -eu
root=$1
libs="libc6 libgcc-s1 libstdc++6 zlib1g libzstd1 libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libmpdec3 libelf1 libbpf1"
python=python3.11
stdlib=/usr/lib/$python

mkdir -p "$root"
# merged /usr: /lib, /bin… are links into /usr, as in the base
for link in /bin /sbin /lib /lib64 /lib32; do
  if [ -L "$link" ]; then cp -a "$link" "$root/"; fi
done
copy() {  # copy a path as it is (a link stays a link), its directory resolved
  dir=$(readlink -f "$(dirname "$1")")
  mkdir -p "$root$dir"
  cp -a "$dir/$(basename "$1")" "$root$dir/"
}
for pkg in $libs; do
  dpkg -L "$pkg" | while read -r f; do
    case $f in
      */gconv/*|*/audit/*) ;;                       # iconv modules and audit libraries: nothing here uses them
      /lib/*.so*|/usr/lib/*.so*|/lib*/ld-linux*|/usr/lib*/ld-linux*) [ -e "$f" ] || [ -L "$f" ] && copy "$f" ;;
    esac
  done
done
copy /usr/bin/$python
mkdir -p "$root$stdlib"
cp -a "$stdlib/." "$root$stdlib/"
# Not loaded by helix and needing libraries left out above (sqlite, Berkeley DB, ncurses, readline, NIS, crypt),
# or tests, docs and tools that only a developer runs.
cd "$root$stdlib"
rm -rf test pydoc_data idlelib tkinter turtledemo turtle.py ensurepip lib2to3 sqlite3 dbm curses \
  lib-dynload/_sqlite3.* lib-dynload/_dbm.* lib-dynload/_gdbm.* lib-dynload/_curses* lib-dynload/readline.* \
  lib-dynload/nis.* lib-dynload/_crypt.* lib-dynload/_test* lib-dynload/_ctypes_test.* lib-dynload/xx* \
  lib-dynload/_xx* lib-dynload/audioop.* lib-dynload/ossaudiodev.* crypt.py EXTERNALLY-MANAGED
cd /
# The CA bundle (made by ca-certificates' postinst, so not in its file list) and the files glibc reads.
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/helix" "$root/etc/helix"
cp -a /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp -a /etc/services /etc/protocols /etc/nsswitch.conf /etc/host.conf "$root/etc/"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nhelix:x:10001:10001:Helix Edge:/var/lib/helix:/usr/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nhelix:x:10001:\n' >"$root/etc/group"
chown 10001:10001 "$root/var/lib/helix"
chmod 0750 "$root/var/lib/helix"
ldconfig -r "$root"
# The interpreter and the extension modules helix loads must find their libraries inside ROOT.
chroot "$root" /usr/bin/$python -c 'import asyncio, bz2, ctypes, decimal, hashlib, json, lzma, pyexpat, ssl, uuid, zlib'
