#!/usr/bin/env bash
# Compare our synthetic-company generator (src/gen/company.ts) with the reference mkcompany.py:
# makes a company with each, mutates it, and prints the figures side by side.
#
#   scripts/check-generator.sh [PATH/TO/mkcompany.py]        (default: ../shared/mkcompany.py)
#   SIZE_MIB=64 scripts/check-generator.sh                    (default size: 256 MiB)
#
# Needs python3, zstd, tar, cmp and the repo's dev dependencies (tsx). Uses ~4x SIZE_MIB of
# temporary disk (under $TMPDIR), removed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${1:-$ROOT/../shared/mkcompany.py}
SIZE=${SIZE_MIB:-256}
ZSTD=${ZSTD:-zstd}
[[ -f $PY ]] || { echo "mkcompany.py not found at $PY" >&2; exit 2; }
command -v "$ZSTD" >/dev/null || ZSTD=/usr/bin/zstd

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-gen.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# A tiny ESM driver for our generator (tsx runs the TypeScript source directly).
cat >"$WORK/drive.mts" <<EOF
import { makeCompany, mutateCompany } from '$ROOT/src/gen/company.ts';
const [cmd, dir, arg] = process.argv.slice(2);
if (cmd === 'make') await makeCompany(dir!, Number(arg), 1);
else await mutateCompany(dir!, 2);
EOF
TSX="$ROOT/node_modules/.bin/tsx"
[[ -x $TSX ]] || TSX="npx --no-install tsx"

echo "making ${SIZE} MiB companies in $WORK ..." >&2
t0=$(now); python3 "$PY" make "$WORK/py" "$SIZE" 1; t1=$(now); PY_MAKE=$(elapsed "$t0" "$t1")
t0=$(now); $TSX "$WORK/drive.mts" make "$WORK/ts" "$SIZE"; t1=$(now); TS_MAKE=$(elapsed "$t0" "$t1")

ratio() { # zstd -1 ratio of a tar of the folder
  local raw comp
  raw=$(tar -C "$1" -cf - . | wc -c)
  comp=$(tar -C "$1" -cf - . | "$ZSTD" -1 -q -c | wc -c)
  python3 -c "print(f'{$raw / $comp:.3f}')"
}
PY_Z=$(ratio "$WORK/py"); TS_Z=$(ratio "$WORK/ts")

cp -a "$WORK/py" "$WORK/py0"; cp -a "$WORK/ts" "$WORK/ts0"
echo "mutating ..." >&2
t0=$(now); python3 "$PY" mutate "$WORK/py" 2; t1=$(now); PY_MUT=$(elapsed "$t0" "$t1")
t0=$(now); $TSX "$WORK/drive.mts" mutate "$WORK/ts"; t1=$(now); TS_MUT=$(elapsed "$t0" "$t1")

python3 - "$WORK" "$PY_MAKE" "$TS_MAKE" "$PY_Z" "$TS_Z" "$PY_MUT" "$TS_MUT" <<'PYEOF'
import os, re, subprocess, sys
work, py_make, ts_make, py_z, ts_z, py_mut, ts_mut = sys.argv[1:]
BIG = ["Tranmgr.900", "Company.900", "LinkMgr.900", "Manager.900", "Journal.log"]
REC = re.compile(rb"VCH\d{9,}\|2026-\d\d-\d\d\|Ledger \d+\|[A-Za-z]+\|\d+\.\d\d\|INR\|"
                 rb"Narration for voucher \d+ party \d+\|[0-9a-f]{16}\n")

def listing(d):
    out = {}
    for p, _, fs in os.walk(d):
        for f in fs:
            full = os.path.join(p, f)
            out[os.path.relpath(full, d)] = os.path.getsize(full)
    return out

def noise_share(f, limit=32 << 20):
    # share of bytes not inside a well-formed record line (≈ the binary-noise share)
    data = open(f, "rb").read(limit)
    good = sum(m.end() - m.start() for m in REC.finditer(data))
    return 1 - good / len(data)

def cmp_count(a, b):
    # bytes that differ over the common length, as `cmp -l a b | wc -l`
    p = subprocess.run(f"cmp -l '{a}' '{b}' 2>/dev/null | wc -l", shell=True, capture_output=True, text=True)
    return int(p.stdout.strip())

def stats(side):
    d = os.path.join(work, side)
    ls = listing(d)
    total = sum(ls.values())
    smalls = {k: v for k, v in ls.items() if k not in BIG}
    return ls, total, smalls, noise_share(os.path.join(d, "Tranmgr.900"))

def mutation(side):
    a, b = os.path.join(work, side + "0"), os.path.join(work, side)
    la, lb = listing(a), listing(b)
    bigs = sorted(la, key=lambda k: (la[k], k))[-4:]
    ins = bigs[0]
    gone = sorted(set(la) - set(lb)); new = sorted(set(lb) - set(la))
    renamed = [x for x in new if x.endswith(".renamed") and x[: -len(".renamed")] in gone]
    added = [x for x in new if x not in renamed]
    deleted = [x for x in gone if x + ".renamed" not in renamed]
    pages = sum(cmp_count(os.path.join(a, k), os.path.join(b, k)) for k in bigs if k != ins)
    ins_diff = cmp_count(os.path.join(a, ins), os.path.join(b, ins))
    small_diff = sum(cmp_count(os.path.join(a, k), os.path.join(b, k))
                     for k in set(la) & set(lb) if k not in bigs and la[k] == lb[k])
    grown = {k: lb[k] - la[k] for k in set(la) & set(lb) if lb[k] != la[k]}
    return dict(total=sum(la.values()), pages=pages, ins=ins, ins_diff=ins_diff, small_diff=small_diff,
                grown=grown, deleted=len(deleted), added=len(added), renamed=len(renamed),
                added_bytes=sum(lb[x] for x in added))

P, T = stats("py0"), stats("ts0")  # before mutation
MP, MT = mutation("py"), mutation("ts")
rows = []
def row(name, p, t, note=""):
    rows.append((name, str(p), str(t), note))
def pct(x, tot):
    return f"{x} ({100 * x / tot:.2f}%)"

row("files", len(P[0]), len(T[0]))
row("total bytes", P[1], T[1], f"diff {100 * (T[1] - P[1]) / P[1]:+.2f}%")
for f in BIG:
    row(f"  {f}", pct(P[0][f], P[1]), pct(T[0][f], T[1]))
row("small files (count)", len(P[2]), len(T[2]))
row("small files (bytes)", pct(sum(P[2].values()), P[1]), pct(sum(T[2].values()), T[1]))
row("  masters/ | reports/", f"{sum(k.startswith('masters') for k in P[2])} | {sum(k.startswith('reports') for k in P[2])}",
    f"{sum(k.startswith('masters') for k in T[2])} | {sum(k.startswith('reports') for k in T[2])}")
row("noise share (Tranmgr 32MiB)", f"{100 * P[3]:.2f}%", f"{100 * T[3]:.2f}%", "non-record bytes")
row("zstd -1 ratio (tar)", py_z, ts_z, f"diff {100 * (float(ts_z) - float(py_z)) / float(py_z):+.2f}%")
row("make time (s)", py_make, ts_make)
row("mutate: page bytes differing", pct(MP["pages"], MP["total"]), pct(MT["pages"], MT["total"]), "cmp -l, 3 largest")
row("mutate: insert file", MP["ins"], MT["ins"])
row("  its bytes differing (cmp -l)", MP["ins_diff"], MT["ins_diff"], "pages + shifted tail")
row("  unchanged-size smalls differing", MP["small_diff"], MT["small_diff"])
for k in sorted(set(MP["grown"]) | set(MT["grown"])):
    row(f"  grown: {k}", MP["grown"].get(k, 0), MT["grown"].get(k, 0))
row("mutate: deleted", MP["deleted"], MT["deleted"])
row("mutate: added (bytes)", f"{MP['added']} ({MP['added_bytes']})", f"{MT['added']} ({MT['added_bytes']})")
row("mutate: renamed", MP["renamed"], MT["renamed"])
row("mutate time (s)", py_mut, ts_mut)

w = [max(len(r[i]) for r in rows + [("figure", "mkcompany.py", "company.ts", "")]) for i in range(4)]
fmt = f"| {{:<{w[0]}}} | {{:>{w[1]}}} | {{:>{w[2]}}} | {{:<{w[3]}}} |"
print(fmt.format("figure", "mkcompany.py", "company.ts", "note"))
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in rows:
    print(fmt.format(*r))
PYEOF
