#!/usr/bin/env bash
# Generates the Python stubs for tokend's API from proto/ into this directory (tokend/v1/, not
# committed), the way gRPC's Python quickstart does. Rerun after the proto changes.
# Needs grpcio-tools: pip install -r requirements.txt
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"${PYTHON:-python3}" -m grpc_tools.protoc -I "$here/../../proto" \
  --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" tokend/v1/tokend.proto
