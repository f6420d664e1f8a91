#!/usr/bin/env python3
"""Writes a one-layer docker-archive (what `docker save` makes, what `docker load`, `ctr images
import` and `kind load image-archive` read) from a directory, without a daemon or a registry.

  mkimage.py ROOTFS_DIR REF OUT_TAR [--entrypoint JSON] [--cmd JSON] [--env K=V]...
             [--stop-signal SIG] [--user U] [--exclude PATH]...

The layer is a plain tar of the directory (numeric owners, extended attributes kept, contents of
the --exclude directories left out but the directories themselves kept). Written to OUT_TAR.tmp
and renamed, so a reader never sees half an archive.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs")
    ap.add_argument("ref")
    ap.add_argument("out")
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--stop-signal")
    ap.add_argument("--user")
    ap.add_argument("--exclude", action="append", default=[])
    a = ap.parse_args()

    out_dir = os.path.dirname(os.path.abspath(a.out))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mkimage.") as tmp:
        layer = os.path.join(tmp, "layer.tar")
        # GNU tar rather than tarfile: it keeps xattrs (file capabilities) and is much faster.
        cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse",
               "-C", a.rootfs, "-cf", layer]
        for ex in a.exclude:
            cmd += ["--exclude", "./" + ex.strip("/") + "/*"]
        subprocess.run(cmd + ["."], check=True)
        h = hashlib.sha256()
        with open(layer, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        diff_id = "sha256:" + h.hexdigest()

        cfg = {"Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        if a.entrypoint:
            cfg["Entrypoint"] = json.loads(a.entrypoint)
        if a.cmd:
            cfg["Cmd"] = json.loads(a.cmd)
        if a.stop_signal:
            cfg["StopSignal"] = a.stop_signal
        if a.user:
            cfg["User"] = a.user
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mkimage.py"}],
        }, sort_keys=True).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        layer_name = diff_id[len("sha256:"):] + "/layer.tar"
        manifest = json.dumps([{"Config": config_name, "RepoTags": [a.ref],
                                "Layers": [layer_name]}]).encode()

        tmp_out = a.out + ".tmp"
        with tarfile.open(tmp_out, "w", format=tarfile.GNU_FORMAT) as t:
            def add_bytes(name, data):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(data))
            add_bytes(config_name, config)
            t.add(layer, arcname=layer_name)
            add_bytes("manifest.json", manifest)
            add_bytes("repositories", json.dumps(
                {a.ref.rsplit(":", 1)[0]: {a.ref.rsplit(":", 1)[1]: diff_id[7:]}}).encode())
        os.replace(tmp_out, a.out)


if __name__ == "__main__":
    main()
