"""Regenerate the gRPC stubs from services/proto/stride/v1/*.proto.

    python services/proto/generate.py          # rewrite the *_pb2*.py files
    python services/proto/generate.py --check  # exit 1 if the committed stubs are stale

protoc writes imports by proto path (`from stride.v1 import common_pb2`); they are rewritten
to the package path (`from services.proto.stride.v1 import ...`) so no sys.path tricks are
needed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).parent
PROTOS = sorted((HERE / "stride" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    args = ["protoc", f"-I{HERE}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(p.relative_to(HERE)) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    files = sorted((out / "stride" / "v1").glob("*_pb2*.py*"))
    for f in files:
        text = f.read_text().replace("from stride.v1 import", "from services.proto.stride.v1 import")
        f.write_text(text)
    return files


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = []
        for f in files:
            target = HERE / "stride" / "v1" / f.name
            if args.check:
                if not target.exists() or target.read_text() != f.read_text():
                    stale.append(target.name)
            else:
                shutil.copyfile(f, target)
    if stale:
        print(f"stale gRPC stubs: {', '.join(stale)}; run python services/proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
