#!/usr/bin/env python3
"""Checks deploy/ as far as it can be checked without docker or a cluster: the manifests parse,
the Job's pod is Guaranteed QoS with the flags that size vscale to it, the MPIJob has a launcher
running mpirun without binding and Guaranteed worker pods, and the Dockerfile runs the README's
set-up and enters a program that the build makes at the path it names.

usage: check_manifests.py SOURCE_DIR BINARY_DIR EXAMPLE_FILE
"""
import os
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("check_manifests: needs PyYAML: apt-get install python3-yaml (scripts/setup.sh installs it)")

src, binary_dir, example_file = sys.argv[1:4]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def load(name):
    with open(os.path.join(src, "deploy", name)) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    check(len(docs) == 1, f"{name}: expected one document, found {len(docs)}")
    return docs[0]


def guaranteed(where, container):
    res = container.get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    for k in ("cpu", "memory"):
        check(k in lim, f"{where}: no {k} limit (Guaranteed QoS needs cpu and memory limits)")
        check(req.get(k, lim.get(k)) == lim.get(k), f"{where}: {k} request {req.get(k)} != limit {lim.get(k)}")
    check(re.fullmatch(r"[0-9]+", str(lim.get("cpu", ""))) is not None,
          f"{where}: cpu limit {lim.get('cpu')!r} is not whole cpus (the static CPU manager gives cores to whole cpus only)")


def value_after(argv, flag):
    """The argument after `flag` in argv, or None."""
    i = argv.index(flag) + 1 if flag in argv else len(argv)
    return argv[i] if i < len(argv) else None


def sized_to_pod(where, args):
    check(value_after(args, "-p") == "auto", f"{where}: no `-p auto` in {args}")
    check(value_after(args, "-t") == "auto", f"{where}: no `-t auto` in {args}")


# Dockerfile: Debian 12, the README's set-up, a program that the set-up builds.
with open(os.path.join(src, "deploy", "Dockerfile")) as f:
    lines = []
    for l in f:
        l = l.strip()
        if not l or l.startswith("#"):
            continue
        if lines and lines[-1].endswith("\\"):  # a continued instruction
            lines[-1] = lines[-1][:-1].rstrip() + " " + l
        else:
            lines.append(l)
instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
check(instr[0] == ("FROM", "debian:12"), f"Dockerfile: starts with {instr[0]}, not FROM debian:12")
workdir = next((a for i, a in instr if i == "WORKDIR"), None)
runs = [a for i, a in instr if i == "RUN"]
with open(os.path.join(src, "README.md")) as f:
    readme = f.read()
check("bash scripts/setup.sh demo" in readme and "bash scripts/setup.sh test" in readme,
      "README: the two set-up commands are not `bash scripts/setup.sh demo|test`")
check(any(r.startswith("bash scripts/setup.sh") for r in runs), f"Dockerfile: no RUN of the README's set-up: {runs}")
with open(os.path.join(src, "scripts", "setup.sh")) as f:
    check("-B build " in f.read(), "setup.sh no longer builds into build/")
entry = next((a for i, a in instr if i == "ENTRYPOINT"), None)
entry_prog = yaml.safe_load(entry)[0] if entry else ""
rel = os.path.relpath(example_file, binary_dir)  # where the build puts the example
check(os.path.isfile(example_file), f"{example_file} was not built")
check(entry_prog == f"{workdir}/build/{rel}", f"Dockerfile: ENTRYPOINT {entry_prog} is not the built {workdir}/build/{rel}")
check(any("openssh-server" in r and "WITH_SSH" in r for r in runs),
      "Dockerfile: no WITH_SSH step installing openssh-server (the MPIJob's worker pods run sshd)")
cmd = next((a for i, a in instr if i == "CMD"), None)
sized_to_pod("Dockerfile CMD", yaml.safe_load(cmd) if cmd else [])

# The Job: one big pod.
job = load("job.yaml")
check(job.get("apiVersion") == "batch/v1" and job.get("kind") == "Job", "job.yaml: not a batch/v1 Job")
pod = job["spec"]["template"]["spec"]
check(pod.get("restartPolicy") in ("Never", "OnFailure"), "job.yaml: a Job's pod needs restartPolicy Never or OnFailure")
for c in pod["containers"]:
    guaranteed(f"job.yaml container {c['name']}", c)
    sized_to_pod(f"job.yaml container {c['name']}", c.get("args", []))
check(not any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod.get("volumes", [])),
      "job.yaml: a /dev/shm volume is not needed (memfd)")

# The MPIJob: a launcher running mpirun, Guaranteed worker pods.
mj = load("mpijob.yaml")
check(mj.get("apiVersion") == "kubeflow.org/v2beta1" and mj.get("kind") == "MPIJob", "mpijob.yaml: not a kubeflow.org/v2beta1 MPIJob")
specs = mj["spec"]["mpiReplicaSpecs"]
check(set(specs) == {"Launcher", "Worker"}, f"mpijob.yaml: replica specs {sorted(specs)}")
launcher = specs["Launcher"]["template"]["spec"]["containers"][0]
argv = launcher.get("command", []) + launcher.get("args", [])
check(argv[:1] == ["mpirun"], f"mpijob.yaml: the launcher runs {argv[:1]}, not mpirun")
check(value_after(argv, "--bind-to") == "none", "mpijob.yaml: mpirun without --bind-to none")
n = int(value_after(argv, "-n") or -1)
workers = specs["Worker"]["replicas"] * mj["spec"].get("slotsPerWorker", 1)
check(n == workers, f"mpijob.yaml: mpirun -n {n} but {workers} worker slots")
check(entry_prog in argv, f"mpijob.yaml: the launcher does not run the image's program {entry_prog}")
sized_to_pod("mpijob.yaml launcher", argv)
for c in specs["Worker"]["template"]["spec"]["containers"]:
    guaranteed(f"mpijob.yaml worker {c['name']}", c)

for f in failures:
    print("check_manifests:", f, file=sys.stderr)
print(f"check_manifests: {len(failures)} problem(s) in deploy/")
sys.exit(1 if failures else 0)
