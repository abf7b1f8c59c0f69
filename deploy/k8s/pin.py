"""Pin the deployed image by digest in the overlays: each overlay's kustomize `images:`
entry for registry.example.com/slipguard carries `digest:`, so every pod runs exactly the
image that was built and tested, whatever its tag is moved to later.

    python -m deploy.k8s.pin sha256:<64 hex digits>                 # every overlay
    python -m deploy.k8s.pin "$(crane digest registry.example.com/slipguard:0.1.0)" --overlay prod

The digest is the registry's (what `docker buildx imagetools inspect`, `crane digest` or
`buildah push --digestfile` report after the push), not a local image ID.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

OVERLAYS = Path(__file__).resolve().parent / "overlays"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_LINE = re.compile(r"^(\s+digest:\s*)sha256:[0-9a-f]{64}\s*$", re.M)


class PinError(ValueError):
    pass


def pin(digest: str, overlays: list[Path]) -> None:
    """Write `digest` into each overlay's kustomization.yaml (its one `digest:` line)."""
    if not DIGEST.fullmatch(digest):
        raise PinError(f"expected a digest like sha256:<64 hex digits>, got {digest!r}")
    for overlay in overlays:
        path = overlay / "kustomization.yaml"
        text = path.read_text()
        found = len(_LINE.findall(text))
        if found != 1:
            raise PinError(f"{path}: expected one `digest: sha256:...` line under images:, found {found}")
        path.write_text(_LINE.sub(lambda m: m.group(1) + digest, text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.k8s.pin", description=__doc__.splitlines()[0])
    parser.add_argument("digest", help="sha256:<64 hex digits>, as the registry reports it")
    parser.add_argument("--overlay", action="append", help="an overlay (repeatable); default: every one")
    parser.add_argument("--overlays", type=Path, default=OVERLAYS, help=argparse.SUPPRESS)  # (tests: a copy)
    args = parser.parse_args(argv)
    overlays = [args.overlays / o for o in args.overlay] if args.overlay else sorted(
        p for p in args.overlays.iterdir() if (p / "kustomization.yaml").exists())
    try:
        pin(args.digest, overlays)
    except PinError as exc:
        parser.exit(1, f"pin: {exc}\n")
    for o in overlays:
        print(f"{o.name}: {args.digest}")


if __name__ == "__main__":
    main()
