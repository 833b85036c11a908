#!/usr/bin/env bash
# Install (or upgrade) triage-node as a systemd service; `make install` runs this as root.
#
#   venv + package      $PREFIX/venv            (default /opt/triage-node/venv; triage-node in venv/bin)
#   model weights       $PREFIX/models          (copied from ./models, replaced as a whole)
#   docs                $PREFIX/docs
#   configuration       $SYSCONFDIR/config.yaml (default /etc/triage-node; written once, never overwritten;
#                                                config.yaml.dist is always the newest template)
#   unit                $UNITDIR/triage-node.service   (default /etc/systemd/system)
#   system user         /usr/lib/sysusers.d/triage-node.conf
#
# DESTDIR stages everything under another root (packaging, tests): nothing outside it is touched, no user is
# created, systemctl is not called. The venv is not relocatable: one staged under DESTDIR runs from there.
#
# It does not start, stop or restart the service. For an upgrade: stop it, back up the database, run this, start
# it (migrations run at start). docs/operations.md has the whole procedure.
set -euo pipefail

usage() {
  cat <<USAGE
usage: install.sh [--destdir DIR] [--prefix DIR] [--sysconfdir DIR] [--unitdir DIR] [--python PYTHON]
                  [--no-deps] [--no-systemctl]
  --no-deps      install only triage-node itself into the venv (its dependencies must already be importable)
  --no-systemctl do not create the user or run systemctl daemon-reload
environment: DESTDIR PREFIX SYSCONFDIR UNITDIR PYTHON as the options; PIP_ARGS extra pip arguments (e.g.
  "--no-index --find-links /srv/wheels" on an offline network); TORCH_SPEC (default torch==2.13.0, the CPU build).
USAGE
}

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/triage-node}
SYSCONFDIR=${SYSCONFDIR:-/etc/triage-node}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
STATEDIR=/var/lib/triage-node
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
DEPS=1
SYSTEMCTL=1
SERVICE_USER=triage-node

while (($#)); do
  case $1 in
    --destdir) DESTDIR=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --sysconfdir) SYSCONFDIR=$2; shift 2 ;;
    --unitdir) UNITDIR=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --no-deps) DEPS=0; shift ;;
    --no-systemctl) SYSTEMCTL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

for d in "$PREFIX" "$SYSCONFDIR" "$UNITDIR"; do
  [[ $d == /* ]] || { echo "install.sh: $d must be an absolute path" >&2; exit 2; }
done
[[ -z $DESTDIR || $DESTDIR == /* ]] || { echo "install.sh: DESTDIR must be an absolute path, got $DESTDIR" >&2; exit 2; }
if [[ -z $DESTDIR && $(id -u) != 0 ]]; then
  echo "install.sh: installing into / needs root (or give --destdir)" >&2
  exit 1
fi

say() { printf 'install.sh: %s\n' "$*"; }
ROOT=${DESTDIR%/}
VENV=$ROOT$PREFIX/venv
PY=$VENV/bin/python

"$PYTHON" - <<'PYCHECK' || { echo "install.sh: $PYTHON must be Python 3.11 or newer" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYCHECK

# -- venv and package -------------------------------------------------------------------------------------------
if [[ -x $PY ]]; then
  say "upgrading the venv in $VENV"
else
  say "creating a venv in $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi

# Build from a clean copy: pip builds in-tree otherwise, and `sudo make install` would leave root-owned build/ and
# *.egg-info folders in the operator's checkout.
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD/src"
cp "$SRC/pyproject.toml" "$BUILD/src/"
for f in README.md LICENSE LICENSE.txt MANIFEST.in; do
  if [[ -e $SRC/$f ]]; then cp "$SRC/$f" "$BUILD/src/"; fi
done
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - triage_node | tar -C "$BUILD/src" -xf -

# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
if ((DEPS)); then
  "$PY" -I -m pip install --quiet --upgrade $PIP_ARGS pip
  # torch first and pinned, as the Makefile does: an unpinned torch would pull a multi-GB CUDA build.
  "$PY" -I -m pip install --quiet $PIP_ARGS "$TORCH_SPEC"
  "$PY" -I -m pip install --quiet $PIP_ARGS "$BUILD/src"
fi
# The same version again (a rebuilt checkout) must replace the code: reinstall the package itself, not its deps.
"$PY" -I -m pip install --quiet --no-deps --force-reinstall $PIP_ARGS "$BUILD/src"
[[ -x $VENV/bin/triage-node ]] || { echo "install.sh: $VENV/bin/triage-node was not installed" >&2; exit 1; }

# -- models and docs --------------------------------------------------------------------------------------------
# Replaced as a whole, so a model removed from the checkout does not linger; swapped in by rename.
mkdir -p "$ROOT$PREFIX"
rm -rf "$ROOT$PREFIX/models.new"
mkdir -p "$ROOT$PREFIX/models.new"
if [[ -d $SRC/models ]]; then
  tar -C "$SRC/models" --exclude=__pycache__ -cf - . | tar -C "$ROOT$PREFIX/models.new" -xf -
fi
rm -rf "$ROOT$PREFIX/models.old"
if [[ -e $ROOT$PREFIX/models ]]; then mv "$ROOT$PREFIX/models" "$ROOT$PREFIX/models.old"; fi
mv "$ROOT$PREFIX/models.new" "$ROOT$PREFIX/models"
rm -rf "$ROOT$PREFIX/models.old"
mkdir -p "$ROOT$PREFIX/docs"
if [[ -d $SRC/docs ]]; then
  find "$SRC/docs" -maxdepth 1 -name '*.md' -exec install -m 0644 {} "$ROOT$PREFIX/docs/" \;
fi
chmod -R u=rwX,go=rX "$ROOT$PREFIX/models" "$ROOT$PREFIX/docs"

# -- configuration ----------------------------------------------------------------------------------------------
# The checkout's config.yaml with the paths a service needs (state under /var/lib, models under the prefix).
mkdir -p "$ROOT$SYSCONFDIR"
DIST=$ROOT$SYSCONFDIR/config.yaml.dist
"$PY" -I - "$SRC/config.yaml" "$DIST" "$STATEDIR" "$PREFIX/models" <<'PYCONF'
import re
import sys
from pathlib import Path

src, dst, state, models = sys.argv[1:]
text = Path(src).read_text(encoding="utf-8")
wanted = {
    ("storage", "spool_dir"): f"{state}/spool",
    ("storage", "database_url"): f"sqlite:///{state}/triage-node.db",
    ("models", "dir"): models,
}
section, seen, out = None, set(), []
for line in text.splitlines(keepends=True):
    top = re.match(r"^([A-Za-z_]\w*):", line)
    if top:
        section = top.group(1)
    m = re.match(r"^(  )(\w+):(\s*)(\S+)(.*)$", line.rstrip("\n"))
    if m and (section, m.group(2)) in wanted:
        key = (section, m.group(2))
        comment = m.group(5).strip()
        line = f"{m.group(1)}{m.group(2)}: {wanted[key]}" + (f"  {comment}" if comment else "") + "\n"
        seen.add(key)
    out.append(line)
missing = [".".join(k) for k in wanted if k not in seen]
if missing:
    sys.exit(f"install.sh: config.yaml has no {', '.join(missing)} line to point at the service paths")
tmp = Path(dst + ".tmp")
tmp.write_text("".join(out), encoding="utf-8")
tmp.replace(dst)
PYCONF
chmod 0644 "$DIST"

# Validate the template with the code just installed, and show where it points.
env -u TRIAGE_NODE__STORAGE__SPOOL_DIR -u TRIAGE_NODE__STORAGE__DATABASE_URL -u TRIAGE_NODE__MODELS__DIR \
  "$PY" -I - "$DIST" "$STATEDIR" "$PREFIX/models" <<'PYVALID'
import sys
from pathlib import Path

from triage_node.config import ConfigError, load_config

dist, state, models = sys.argv[1:]
try:
    cfg = load_config(Path(dist))
except ConfigError as exc:
    sys.exit(f"install.sh: the config template is invalid:\n{exc}")
assert str(cfg.storage.spool_dir) == f"{state}/spool", cfg.storage.spool_dir
assert cfg.storage.database_url == f"sqlite:///{state}/triage-node.db", cfg.storage.database_url
assert str(cfg.models.dir) == models, cfg.models.dir
PYVALID

CONF=$ROOT$SYSCONFDIR/config.yaml
if [[ -e $CONF ]]; then
  say "kept $CONF (compare with config.yaml.dist for new settings)"
  # An upgrade must not start a daemon that refuses its config: check the live file with the new code.
  if ! "$VENV/bin/triage-node" check-config --config "$CONF"; then
    echo "install.sh: $CONF is not valid for this version; fix it before starting the service" >&2
    exit 1
  fi
else
  # Holds user password hashes, the session secret and SMTP credentials: readable by the service group only.
  install -m 0640 "$DIST" "$CONF"
  say "wrote $CONF"
fi

# -- unit and user ----------------------------------------------------------------------------------------------
mkdir -p "$ROOT$UNITDIR" "$ROOT$SYSUSERSDIR"
sed -e "s#/opt/triage-node#$PREFIX#g" -e "s#/etc/triage-node#$SYSCONFDIR#g" "$SRC/systemd/triage-node.service" \
  > "$ROOT$UNITDIR/triage-node.service.tmp"
chmod 0644 "$ROOT$UNITDIR/triage-node.service.tmp"
mv "$ROOT$UNITDIR/triage-node.service.tmp" "$ROOT$UNITDIR/triage-node.service"
# The template for a multi-node deployment: one unit per role (docs/operations.md, "Multi-node deployment").
sed -e "s#/opt/triage-node#$PREFIX#g" -e "s#/etc/triage-node#$SYSCONFDIR#g" "$SRC/systemd/triage-node@.service" \
  > "$ROOT$UNITDIR/triage-node@.service.tmp"
chmod 0644 "$ROOT$UNITDIR/triage-node@.service.tmp"
mv "$ROOT$UNITDIR/triage-node@.service.tmp" "$ROOT$UNITDIR/triage-node@.service"
install -m 0644 "$SRC/systemd/triage-node.sysusers" "$ROOT$SYSUSERSDIR/triage-node.conf"

if [[ -z $DESTDIR ]] && ((SYSTEMCTL)); then
  if ! getent passwd "$SERVICE_USER" >/dev/null; then
    if command -v systemd-sysusers >/dev/null; then
      systemd-sysusers "$SYSUSERSDIR/triage-node.conf"
    else
      useradd --system --home-dir "$STATEDIR" --no-create-home --shell /usr/sbin/nologin \
        --comment "triage-node DICOM triage daemon" "$SERVICE_USER"
    fi
  fi
  chown "root:$SERVICE_USER" "$CONF"
  chmod 0640 "$CONF"
  if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    say "installed; start it with: systemctl enable --now triage-node"
  else
    say "installed; systemd is not running here, so the unit was not loaded"
  fi
else
  say "staged under ${DESTDIR:-/} (no user created, systemctl not called)"
fi
