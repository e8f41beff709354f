#!/usr/bin/env bash
# Boot a throwaway systemd as PID 1 of its own mount, PID, network, UTS, IPC and cgroup
# namespaces, on an overlay of this machine's / (every write lands in DIR/upper), for
# tests/test_node_service.py's real install. Nothing leaves the namespaces: the network is a
# loopback of its own, the cgroups a subtree DIR names, /work is mounted read-only.
#
#   usage: systemd_container.sh DIR SITE_PACKAGES [SRC]   (root; prints nothing, stays in front)
#
# SITE_PACKAGES is mounted read-only at /opt/fogwheel-site, so a venv made inside from the
# distribution's python3 can import the fogwheel under test (ProtectHome=yes hides /root).
# SRC, the checkout an editable install points into, is mounted read-only at its own path
# when /work does not hold it (a clone under /tmp would vanish under the fresh /tmp).
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
    D=$1
    SITE=$2
    SRC=${3:-/work}
    tag=$(basename "$D")
    # a cgroup of our own below ours in every hierarchy: the container's root there
    : > "$D/cgroups"
    mine=$(cat /proc/self/cgroup)  # read whole first: it changes as we move
    while IFS=: read -r _ ctrls path; do
        if [ -z "$ctrls" ]; then mnt=/sys/fs/cgroup/unified; [ -d $mnt ] || mnt=/sys/fs/cgroup
        elif [ "$ctrls" = name=systemd ]; then mnt=/sys/fs/cgroup/systemd
        else mnt=/sys/fs/cgroup/${ctrls%%,*}; fi
        [ -d "$mnt$path" ] || continue
        mkdir -p "$mnt$path/$tag"
        for f in cpuset.cpus cpuset.mems; do  # a new v1 cpuset starts empty: nobody may enter
            [ -f "$mnt$path/$f" ] && cat "$mnt$path/$f" > "$mnt$path/$tag/$f"
        done
        echo $$ > "$mnt$path/$tag/cgroup.procs"
        echo "$mnt$path/$tag" >> "$D/cgroups"
    done <<< "$mine"
    exec unshare --cgroup --mount --pid --net --uts --ipc --fork --kill-child \
        bash "$0" --inside "$D" "$SITE" "$SRC"
fi

D=$2
SITE=$3
SRC=$4
R=$D/root
mkdir -p "$D/upper" "$D/work" "$R"
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/sys/fs/cgroup"
# the cgroup hierarchies again, seen from inside the cgroup namespace: rooted at our subtree
mine=$(cat /proc/self/cgroup)
while IFS=: read -r _ ctrls _; do
    if [ -z "$ctrls" ]; then
        if grep -q " /sys/fs/cgroup/unified " /proc/mounts; then
            mkdir -p "$R/sys/fs/cgroup/unified"
            mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/unified"
        else
            umount "$R/sys/fs/cgroup"
            mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
        fi
    elif [ "$ctrls" = name=systemd ]; then
        mkdir -p "$R/sys/fs/cgroup/systemd"
        mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
    else
        mkdir -p "$R/sys/fs/cgroup/${ctrls%%,*}"
        mount -t cgroup -o "$ctrls" cgroup "$R/sys/fs/cgroup/${ctrls%%,*}"
    fi
done <<< "$mine"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mount --bind /work "$R/work"
mount -o remount,bind,ro "$R/work"
case "$SRC" in
    /work|/work/*) ;;
    *) mkdir -p "$R$SRC" && mount --bind "$SRC" "$R$SRC" && mount -o remount,bind,ro "$R$SRC" ;;
esac
mkdir -p "$R/opt/fogwheel-site"
mount --bind "$SITE" "$R/opt/fogwheel-site"
mount -o remount,bind,ro "$R/opt/fogwheel-site"
# a target of our own: none of this image's services (databases, brokers) start
cat > "$R/etc/systemd/system/fogtest.target" <<'EOF'
[Unit]
Description=fogwheel's install test
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
rm -f "$R"/etc/systemd/system/multi-user.target.wants/*
echo fogtest > "$R/etc/hostname"
cd "$R"
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
# shared inside (as a booted systemd expects: it moves credential mounts in from a child
# namespace); the host's mounts were made private above, so nothing propagates out
mount --make-rshared /
export container=fogwheel-test
exec /lib/systemd/systemd --system --unit=fogtest.target
