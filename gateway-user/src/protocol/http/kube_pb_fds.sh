#!/usr/bin/env bash
# Regenerates kube_pb.fds, the protobuf descriptor set kube_pb.rs decodes Kubernetes bodies with,
# and lists the fields whose JSON spelling differs from their protobuf name (kube_pb.rs keeps
# them in RENAMED and INLINE: compare this script's output with those tables).
#
# Input: the `k8s-pb-codegen/protos` directory of the k8s-pb repository at the commit of the
# k8s-pb release in gateway-user's dev-dependencies (0.9.0: Kubernetes 1.35.0; its protos are
# Kubernetes' generated.proto files with the `k8s.io.` package prefix removed), and
# `k8s-pb-codegen/openapi/swagger.json` of the same commit (the API's JSON spelling).
# Needs protoc (Debian: protobuf-compiler) and python3, only to regenerate.
#
# Usage: kube_pb_fds.sh PROTOS_DIR SWAGGER_JSON
set -euo pipefail
protos=$(cd "$1" && pwd)
swagger=$(realpath "$2")
out=$(cd "$(dirname "$0")" && pwd)/kube_pb.fds
cd "$protos"
# The stable (v1, v2) versions of the built-in groups and meta/v1: beta and alpha versions are
# left out on purpose, so a body of one of them is refused as an unknown kind.
files=$(find api -path '*/v1/generated.proto' -o -path '*/v2/generated.proto' | sort)
protoc -I. --include_imports --descriptor_set_out="$out" \
    apimachinery/pkg/apis/meta/v1/generated.proto $files 2>/dev/null
echo "wrote $out ($(stat -c %s "$out") bytes)"
PROTOS="$protos" SWAGGER="$swagger" FILES="$files" python3 - <<'PY'
import json, os, re
defs = json.load(open(os.environ["SWAGGER"]))["definitions"]
files = os.environ["FILES"].split() + ["apimachinery/pkg/apis/meta/v1/generated.proto"]
for f in files:
    txt = open(os.path.join(os.environ["PROTOS"], f)).read()
    pkg = re.search(r"^package ([\w.]+);", txt, re.M).group(1)
    for m in re.finditer(r"^message (\w+) \{(.*?)^\}", txt, re.M | re.S):
        d = defs.get("io.k8s." + pkg + "." + m.group(1))
        if d is None:
            continue
        props = d.get("properties", {})
        for fm in re.finditer(r"^\s+(?:optional|repeated)?\s*([\w.<>, ]+?) (\w+) = \d+;", m.group(2), re.M):
            if fm.group(2) not in props:
                print("not in JSON:", pkg + "." + m.group(1), fm.group(2), "(" + fm.group(1) + ")")
PY
