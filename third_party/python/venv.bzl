"""A repository that points Bazel's Python toolchain at a project venv.

`py_binary` and `py_test` otherwise run on whatever `python3` is on PATH. The
venv lives inside the workspace (made by tools/setup.sh), but a py_runtime
needs an absolute interpreter path, so this rule resolves it at fetch time.
When the venv is missing, the runtime is a script that says in one line how
to create it, so builds still succeed and runs fail helpfully.

The repository also exposes the venv's TensorFlow C++ headers and framework
library as `:tensorflow_framework`, for custom ops compiled against exactly
the TensorFlow they are loaded into.
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    {interpreter},
    python_version = "PY3",
)

cc_library(
    name = "tensorflow_framework",
    srcs = glob(["tensorflow/libtensorflow_framework.so.2"]),
    hdrs = glob(["tensorflow/include/**"]),
    includes = ["tensorflow/include"],
    # The flags tf.sysconfig.get_compile_flags() gives for the pip package.
    defines = ["_GLIBCXX_USE_CXX11_ABI=1", "EIGEN_MAX_ALIGN_BYTES=64"],
)
"""

_MISSING = """#!/bin/sh
echo "mobilenet_v1: the Python environment {venv} is missing; create it with: {hint}" >&2
exit 1
"""

def _python_venv_impl(ctx):
    workspace = ctx.path(Label("//:WORKSPACE")).dirname
    python = workspace.get_child(ctx.attr.venv_dir).get_child("bin").get_child("python3")
    if python.exists:
        interpreter = 'interpreter_path = "%s"' % python
    else:
        ctx.file("missing_venv.sh", _MISSING.format(
            venv = ctx.attr.venv_dir,
            hint = ctx.attr.setup_hint,
        ), executable = True)
        interpreter = 'interpreter = "missing_venv.sh"'
    lib = workspace.get_child(ctx.attr.venv_dir).get_child("lib")
    if lib.exists:
        for python_dir in lib.readdir():
            tensorflow = python_dir.get_child("site-packages").get_child("tensorflow")
            if tensorflow.exists:
                ctx.symlink(tensorflow, "tensorflow")
    ctx.file("BUILD", _BUILD.format(interpreter = interpreter))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    attrs = {
        "venv_dir": attr.string(mandatory = True),
        "setup_hint": attr.string(mandatory = True),
    },
    # tools/setup.sh runs `bazel sync --only=<name>` when it creates a venv.
    local = True,
)
