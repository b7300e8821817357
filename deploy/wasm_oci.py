#!/usr/bin/env python3
"""Writes the filter as an OCI image layout that Istio's agent can pull (`make wasm-oci`).

The image is the Wasm image specification's *compat* variant with OCI media types, the form
`docker build` makes from `FROM scratch` + `COPY gatehouse_filter.wasm plugin.wasm`: one
`application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, and an OCI image
config. istio-agent (pkg/wasm/imagefetcher.go) takes the last layer of such an image and reads
`plugin.wasm` from it. Istio's other accepted form, the *oci* variant, needs exactly two
layers; a single `application/vnd.module.wasm.content.layer.v1+wasm` layer is refused.

    python3 deploy/wasm_oci.py --wasm target/wasm32-wasip1/release/gatehouse_filter.wasm \\
        --out target/oci/gatehouse-filter --tag 0.1.0

The output is reproducible (fixed times, owners and modes): the same .wasm gives the same
digests. Only the standard library is used. Push it with
`oras cp --from-oci-layout target/oci/gatehouse-filter:TAG REGISTRY/gatehouse-filter:TAG`,
`skopeo copy oci:target/oci/gatehouse-filter:TAG docker://REGISTRY/gatehouse-filter:TAG`
or `crane push target/oci/gatehouse-filter REGISTRY/gatehouse-filter:TAG`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# The file name istio-agent looks for in the layer.
PLUGIN_FILE = "plugin.wasm"
# Go's names for the WASI preview 1 target (GOOS=wasip1 GOARCH=wasm), as the spec advises.
PLATFORM = {"os": "wasip1", "architecture": "wasm"}


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(wasm: bytes) -> bytes:
    """A tar holding only plugin.wasm, owned by root, mode 0644, dated the epoch."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    # No file name and time 0 in the header: the same input gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def descriptor(media_type: str, blob: bytes, annotations: dict[str, str] | None = None) -> dict:
    d: dict = {"mediaType": media_type, "digest": digest(blob), "size": len(blob)}
    if annotations:
        d["annotations"] = annotations
    return d


def image(wasm: bytes, version: str) -> tuple[dict[str, bytes], bytes, dict]:
    """The blobs by digest, the manifest's bytes and its descriptor for index.json."""
    tar = layer_tar(wasm)
    layer = gzipped(tar)
    config = canonical(
        {
            **PLATFORM,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        }
    )
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [descriptor(LAYER_MEDIA_TYPE, layer, {"org.opencontainers.image.title": PLUGIN_FILE})],
            "annotations": {
                "org.opencontainers.image.title": "gatehouse-filter",
                "org.opencontainers.image.description": "Gatehouse proxy-wasm filter (Envoy, Istio)",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        }
    )
    blobs = {digest(b): b for b in (layer, config, manifest)}
    ref = descriptor(MANIFEST_MEDIA_TYPE, manifest, {"org.opencontainers.image.ref.name": version})
    ref["platform"] = dict(PLATFORM)
    return blobs, manifest, ref


def write_layout(wasm: bytes, out: Path, version: str) -> dict:
    """Writes a fresh layout at `out` (anything there before is removed); returns the
    manifest's descriptor."""
    blobs, _, ref = image(wasm, version)
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    for name, blob in blobs.items():
        (out / "blobs" / "sha256" / name.removeprefix("sha256:")).write_bytes(blob)
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [ref]}))
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wasm", type=Path, required=True, help="the filter (.wasm)")
    parser.add_argument("--out", type=Path, required=True, help="the layout's folder (replaced)")
    parser.add_argument("--tag", required=True, help="the image's tag (org.opencontainers.image.ref.name)")
    args = parser.parse_args(argv)
    wasm = args.wasm.read_bytes()
    if not wasm.startswith(b"\0asm"):
        print(f"error: {args.wasm} is not a WebAssembly module", file=sys.stderr)
        return 1
    ref = write_layout(wasm, args.out, args.tag)
    print(f"Wrote {args.out} (OCI image layout), tag {args.tag}")
    print(f"  manifest  {ref['digest']}   (pin it: oci://REGISTRY/gatehouse-filter@{ref['digest']})")
    print(f"  plugin    {digest(wasm)}   ({len(wasm)} bytes)")
    print(f"Push: oras cp --from-oci-layout {args.out}:{args.tag} REGISTRY/gatehouse-filter:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
