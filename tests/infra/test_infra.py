"""The cluster and container definitions under infra/ against the job they run.

Fast and offline (no docker, kubectl, cloud or network): every YAML parses into the expected kinds; every
`python jobs/label.py ...` command written in infra/, the READMEs and docs/ is accepted by the job's own
argument parser (a renamed or removed flag fails here, not on a cluster); the job's GPU and CPU requests fit
the workers that the KubeRay specs and the cluster launcher define, as the driver itself computes them; the
specs agree with each other and with the Dockerfile (image, Ray version, model cache); no credential is
written anywhere; and the local multi-node script binds and numbers its nodes as documented.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
JOB = re.compile(r"\bpython3?\s+jobs/label\.py\b")
HF_HOME = "/models/huggingface"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What each YAML file under infra/ must hold (kinds in order; None: a Ray cluster launcher config).
KINDS = {
    "cluster-aws.yaml": None,
    "kuberay/raycluster.yaml": ["RayCluster"],
    "kuberay/rayjob.yaml": ["RayJob"],
    "kuberay/hf-cache.yaml": ["PersistentVolumeClaim", "Job"],
    "kuberay/s3-secret.example.yaml": ["Secret"],
}


# --- reading the files -------------------------------------------------------------------------------------


def load(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def one(path: Path) -> dict:
    docs = load(path)
    assert len(docs) == 1, f"{path.relative_to(ROOT)}: expected one document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def uncommented(text: str) -> str:
    """The text with each full-line comment's `#` removed (commands in comments are read too), and
    backslash-newline continuations joined."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    return re.sub(r"\\\n", " ", "\n".join(lines))


def comments_only(text: str) -> str:
    return uncommented("\n".join(line for line in text.splitlines() if line.lstrip().startswith("#")))


def code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S))


def strings_in(node) -> list[str]:
    """Every string value in a parsed YAML document; a list of strings (a container's command and args)
    also as one shell command line."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings_in(value)]
    if isinstance(node, list):
        found = [text for value in node for text in strings_in(value)]
        if node and all(isinstance(value, str) for value in node):
            found.append(shlex.join(node))
        return found
    return []


def commands_in(text: str) -> list[str]:
    """From each line that runs the job: the text from `python jobs/label.py` on, up to a backtick (the end
    of inline code). A mention without arguments (prose naming the command) is not a command line."""
    found = []
    for line in text.splitlines():
        if match := JOB.search(line):
            command = line[match.start():].split("`", 1)[0]
            if command[match.end() - match.start():].strip(" \t\"'.,;:)"):
                found.append(command)
    return found


def job_commands() -> list[tuple[str, str]]:
    """(file, command) for every job command in infra/ (YAML values and comments, scripts, Dockerfile,
    README code blocks) and in the code blocks of the main README and docs/."""
    found = []
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        if path.suffix in (".yaml", ".yml"):
            commands = commands_in(comments_only(text))
            for doc in load(path):
                commands += [c for value in strings_in(doc) for c in commands_in(value.replace("\n", " "))]
        elif path.suffix == ".md":
            commands = commands_in(uncommented(code_blocks(text)))
        elif path.suffix in (".sh", ".py", ".dockerignore") or path.name == "Dockerfile":
            commands = commands_in(uncommented(text))
        else:
            continue
        found += [(str(path.relative_to(ROOT)), command) for command in dict.fromkeys(commands)]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        commands = commands_in(uncommented(code_blocks(doc.read_text())))
        found += [(str(doc.relative_to(ROOT)), c) for c in dict.fromkeys(commands)]
    return found


def job_argv(command: str) -> list[str]:
    """The job's arguments in a command line that starts with `python jobs/label.py`: shell words up to the
    end of the command (`;`, `&&`, `|`, `)`, a comment, or the closing quote of a string it sits in)."""
    while True:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = ""
        try:
            words = list(lexer)
            break
        except ValueError:  # an unmatched quote: the command is inside a quoted string (echo "...")
            command = command[:max(command.rfind('"'), command.rfind("'"))]
    assert words[1] == "jobs/label.py", command
    argv = []
    for word in words[2:]:
        if word.startswith("#") or set(word) <= set(";&|()<>"):
            break
        argv.append(word)
    return argv


@pytest.fixture(scope="module")
def label():
    """jobs/label.py as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("infra_checked_label_job", ROOT / "jobs" / "label.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(label, argv: list[str], where: str):
    """The job's parsed arguments, or a test failure naming the command; values are checked too."""
    parser = label.parser()
    parser.allow_abbrev = False  # the commands spell every flag in full: a renamed flag must fail here
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"{where}: jobs/label.py rejects {shlex.join(argv)!r} (exit status {exit.code})")
    try:
        label.job_from_args(args)
    except ValueError as error:
        pytest.fail(f"{where}: jobs/label.py rejects {shlex.join(argv)!r}: {error}")
    return args


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_args() -> dict[str, str]:
    return dict(value.split("=", 1) for kind, value in dockerfile_instructions() if kind == "ARG" and "=" in value)


def quantity(value) -> Fraction:
    """A Kubernetes CPU or count quantity ("8", "500m", 1) as a number."""
    text = str(value)
    return Fraction(text[:-1]) / 1000 if text.endswith("m") else Fraction(text)


# --- the clusters as the tests see them --------------------------------------------------------------------


def gpu_worker_group(spec: dict) -> dict:
    groups = [g for g in spec["workerGroupSpecs"]
              if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
    assert len(groups) == 1, "expected one GPU worker group"
    return groups[0]


def kuberay_shape() -> dict:
    """What the KubeRay GPU workers offer Ray, and how many there may be."""
    spec = one(KUBERAY / "raycluster.yaml")["spec"]
    group = gpu_worker_group(spec)
    limit = group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi"), "memory limits are written in Gi"
    return {"cpu": Fraction(group["rayStartParams"]["num-cpus"]), "gpu": Fraction(group["rayStartParams"]["num-gpus"]),
            "memory": ray_memory(int(limit[:-2]) * 2**30), "max": group["maxReplicas"],
            "head": {"CPU": float(spec["headGroupSpec"]["rayStartParams"]["num-cpus"]),
                     "GPU": float(spec["headGroupSpec"]["rayStartParams"]["num-gpus"])}}


INSTANCE_MEMORY = {"g5.2xlarge": 32 * 2**30}
"""Bytes of memory of the cluster launcher's worker instance types (AWS's published sizes)."""


def ray_memory(machine: int) -> float:
    """A lower bound of the `memory` resource Ray gives a node of `machine` bytes: Ray keeps 30% for the object
    store and leaves some to the system, so 40% of the machine is always there to reserve."""
    return 0.4 * machine


def aws_shape() -> dict:
    config = one(INFRA / "cluster-aws.yaml")
    types = config["available_node_types"]
    worker = types["ray.worker.gpu"]
    return {"cpu": Fraction(worker["resources"]["CPU"]), "gpu": Fraction(worker["resources"]["GPU"]),
            "memory": ray_memory(INSTANCE_MEMORY[worker["node_config"]["InstanceType"]]),
            "max": worker["max_workers"], "head": dict(types[config["head_node_type"]]["resources"])}


SHAPES = {"kuberay": kuberay_shape, "aws": aws_shape}


def simulated_resources(label, args, nodes: list[dict]) -> tuple[int, float, float, float]:
    """(actors, gpus, cpus and memory per actor) as the job decides them (`pipeline.execution.capacity`, with the job's
    defaults) on an idle cluster of `nodes` (Ray resource dicts)."""
    from pipeline.execution import capacity

    job = label.job_from_args(args)
    cluster = [capacity.Node(str(i), node.get("CPU", 0), node.get("GPU", 0), node.get("memory", 0))
               for i, node in enumerate(nodes)]
    free = {name: sum(float(node.get(name, 0)) for node in nodes) for name in ("CPU", "GPU", "memory")}
    shape = capacity.actor_shape(cluster, job.model, job.gpus_per_actor, job.cpus_per_actor, job.memory_per_actor)
    actors = capacity.fit(shape, cluster, free, job.num_actors, 10**6, autoscaling=job.startup_timeout > 0)
    return actors.count, shape.gpus, shape.cpus, shape.memory


def check_fits(label, args, shape: dict, where: str) -> None:
    """The job's actors fit the autoscaling GPU workers of `shape`, on a cold and on a full cluster."""
    assert args.startup_timeout > 0, (
        f"{where}: the GPU workers start at zero; without --startup-timeout the job refuses before they come up")
    assert args.gpus_per_actor, (
        f"{where}: give --gpus-per-actor: a cluster without GPU workers yet has no GPU to detect, and the job "
        "would run its actors on CPUs")
    gpa = Fraction(args.gpus_per_actor)
    assert shape["gpu"] >= gpa and (shape["gpu"] / gpa).denominator == 1, (
        f"{where}: a worker's {shape['gpu']} GPU(s) are not a whole multiple of --gpus-per-actor {gpa}")

    worker = {"CPU": float(shape["cpu"]), "GPU": float(shape["gpu"]), "memory": shape["memory"]}
    full = [shape["head"]] + [worker] * shape["max"]
    actors, gpus, cpus, memory = simulated_resources(label, args, full)
    assert gpus == float(gpa)
    assert Fraction(cpus) <= shape["cpu"], (
        f"{where}: {cpus:g} CPU(s) per actor (--cpus-per-actor or its default) exceed a worker's {shape['cpu']}")
    assert memory <= shape["memory"], (
        f"{where}: {memory / 2**30:g} GiB per actor (--memory-per-actor or its default) exceed a worker's "
        f"{shape['memory'] / 2**30:g} GiB")
    per_worker = min(int(shape["gpu"] / gpa), int(shape["cpu"] / Fraction(cpus)),
                     int(shape["memory"] // memory) if memory else shape["max"])
    assert actors <= per_worker * shape["max"], (
        f"{where}: {actors} actor(s) cannot all start on at most {shape['max']} workers ({per_worker} each): "
        "the job would give up after --startup-timeout")

    cold = simulated_resources(label, args, [shape["head"]])  # no JobError: it waits instead
    assert cold == (actors, gpus, cpus, memory), (
        f"{where}: the job asks for {cold} on a cluster that is still scaling up but {(actors, gpus, cpus, memory)} "
        "on a full one; set --num-actors")


# --- every file parses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses_into_expected_kinds(path):
    docs = load(path)
    assert docs, "empty"
    name = str(path.relative_to(INFRA))
    assert name in KINDS, f"{name}: new YAML file; say in KINDS what it must hold"
    if KINDS[name] is None:
        assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(docs[0])
        return
    assert [doc.get("kind") for doc in docs] == KINDS[name]
    for doc in docs:
        assert doc.get("metadata", {}).get("name"), f"{name}: a {doc['kind']} without metadata.name"
        if doc["kind"].startswith("Ray"):
            assert doc["apiVersion"] == "ray.io/v1"


def test_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(one(INFRA / "cluster-aws.yaml")))


# --- every job command is one the job accepts ---------------------------------------------------------------

COMMANDS = job_commands()


def test_job_commands_are_found_where_expected():
    sources = {source for source, _ in COMMANDS}
    for expected in ("infra/kuberay/rayjob.yaml", "infra/cluster-aws.yaml", "infra/local_cluster.py",
                     "infra/README.md", "README.md", "docs/models.md"):
        assert expected in sources, f"no `python jobs/label.py ...` command found in {expected}"


@pytest.mark.parametrize("source, command", COMMANDS, ids=[f"{s}:{i}" for i, (s, _) in enumerate(COMMANDS)])
def test_job_command_parses(label, source, command):
    argv = job_argv(command)
    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exit:
            label.parser().parse_args(argv)
        assert exit.value.code == 0
        return
    parse(label, argv, source)


# --- the job fits the clusters ------------------------------------------------------------------------------


def rayjob_args(label):
    return parse(label, job_argv(one(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]), "rayjob.yaml")


def test_rayjob_fits_the_kuberay_workers(label):
    check_fits(label, rayjob_args(label), kuberay_shape(), "rayjob.yaml entrypoint")


def test_cluster_launcher_job_fits_its_workers(label):
    commands = [c for s, c in COMMANDS if s == "infra/cluster-aws.yaml"]
    assert commands
    for command in commands:
        check_fits(label, parse(label, job_argv(command), "cluster-aws.yaml"), aws_shape(),
                   "cluster-aws.yaml")


def test_autoscaling_commands_in_infra_readme_fit_every_cluster(label):
    """The README shows one command for both the KubeRay and the cluster launcher cluster."""
    checked = 0
    for source, command in COMMANDS:
        if source != "infra/README.md":
            continue
        args = parse(label, job_argv(command), source)
        if args.startup_timeout:
            for name, shape in SHAPES.items():
                check_fits(label, args, shape(), f"{source} on {name}")
            checked += 1
    assert checked


def test_rayjob_cluster_is_the_raycluster_spec():
    """The RayJob embeds the standing cluster's spec unchanged, so both run the job on the same workers."""
    assert one(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"] == one(KUBERAY / "raycluster.yaml")["spec"]


def test_kuberay_head_and_gpu_workers():
    spec = one(KUBERAY / "raycluster.yaml")["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0].get("resources"))

    assert spec["enableInTreeAutoscaling"] is True
    group = gpu_worker_group(spec)
    assert group["minReplicas"] == 0 <= group.get("replicas", 0) <= group["maxReplicas"] and group["maxReplicas"] >= 1
    container = group["template"]["spec"]["containers"][0]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    params = group["rayStartParams"]
    assert quantity(limits["nvidia.com/gpu"]) == quantity(params["num-gpus"]) >= 1, \
        "the pod's GPUs and the GPUs it offers Ray differ"
    assert quantity(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == quantity(limits["nvidia.com/gpu"])
    assert quantity(requests["cpu"]) == quantity(params["num-cpus"]) <= quantity(limits["cpu"]), \
        "the pod's CPU request and the CPUs it offers Ray differ"


def test_cluster_launcher_head_and_gpu_workers():
    config = one(INFRA / "cluster-aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 0) == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-gpus=0" in head_start and "--num-cpus=0" in head_start, \
        "the head's resources and its ray start differ"
    worker = types["ray.worker.gpu"]
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert worker["resources"]["GPU"] >= 1 and float(worker["resources"]["GPU"]).is_integer()
    assert "--gpus all" in config["docker"]["worker_run_options"]


# --- the pieces agree ---------------------------------------------------------------------------------------


def values_of(node, key: str):
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from values_of(value, key)
    elif isinstance(node, list):
        for value in node:
            yield from values_of(value, key)


def images() -> dict[str, str]:
    found = {}
    for path in (KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml", KUBERAY / "hf-cache.yaml"):
        for i, image in enumerate(values_of(load(path), "image")):
            found[f"{path.name}#{i}"] = image
    found["cluster-aws.yaml"] = one(INFRA / "cluster-aws.yaml")["docker"]["image"]
    return found


def test_one_image_everywhere_tagged_with_the_project_version():
    found = images()
    assert len(set(found.values())) == 1, found
    image = next(iter(found.values()))
    assert image.endswith(":" + PYPROJECT["project"]["version"]), f"{image}: tag it with the project version"


def test_ray_version_is_the_projects_and_kuberays():
    ray_version = dockerfile_args()["RAY_VERSION"]
    ray_spec = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray"))
    assert Version(ray_version) in SpecifierSet(ray_spec.split("]", 1)[1]), f"{ray_version} not in {ray_spec}"
    for path in (KUBERAY / "raycluster.yaml",):
        assert one(path)["spec"]["rayVersion"] == ray_version
    assert one(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    assert Version(dockerfile_args()["PYTHON_VERSION"]) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_model_cache_is_mounted_where_the_image_looks_and_holds_the_jobs_model(label):
    assert f"HF_HOME={HF_HOME}" in " ".join(v for k, v in dockerfile_instructions() if k == "ENV").replace(" \\", "")
    group = gpu_worker_group(one(KUBERAY / "raycluster.yaml")["spec"])
    pod = group["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert HF_HOME in mounts, "the GPU workers do not mount the model cache"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[HF_HOME])
    pvc, prefetch = load(KUBERAY / "hf-cache.yaml")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "every worker mounts the cache at once"
    job_pod = prefetch["spec"]["template"]["spec"]
    assert HF_HOME in [m["mountPath"] for m in job_pod["containers"][0]["volumeMounts"]]
    assert job_pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    # The workers run offline: the model the job loads is the one the Job fetched.
    fetched = job_pod["containers"][0]["args"][0]
    assert rayjob_args(label).model == fetched

    aws = one(INFRA / "cluster-aws.yaml")
    assert f"/models/huggingface:{HF_HOME}" in " ".join(aws["docker"]["run_options"])
    setup = " ".join(aws["worker_setup_commands"])
    workdir = [v for k, v in dockerfile_instructions() if k == "WORKDIR"][-1]
    assert f"python {workdir}/infra/prefetch_model.py" in setup
    for _, command in [sc for sc in COMMANDS if sc[0] == "infra/cluster-aws.yaml"]:
        assert label.parser().parse_args(job_argv(command)).model in setup


def test_ray_token_authentication_is_on():
    """Ray >= 2.59 expects token auth; the token itself is generated, never written into a config."""
    assert one(KUBERAY / "raycluster.yaml")["spec"]["authOptions"]["mode"] == "token"
    aws = one(INFRA / "cluster-aws.yaml")
    assert "--env RAY_AUTH_MODE=token" in aws["docker"]["run_options"]
    assert "~/.ray/auth_token" in aws["file_mounts"]


# --- no credentials -----------------------------------------------------------------------------------------

SENSITIVE = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL", re.I)
LEAKS = [re.compile(p) for p in (
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",                                      # AWS access key ids
    r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b",    # AWS secret keys
    r"\bhf_[A-Za-z0-9]{30,}\b",                                         # Hugging Face tokens
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
)]


def env_lists(node):
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield node["env"]
        for value in node.values():
            yield from env_lists(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_lists(value)


def test_secrets_come_from_kubernetes_secrets_only():
    checked = set()
    for path in yaml_files():
        for doc in load(path):
            if not isinstance(doc, dict) or doc.get("kind") == "Secret":
                continue
            for env in env_lists(doc):
                for var in env:
                    if SENSITIVE.search(var["name"]):
                        assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), (
                            f"{path.name}: {var['name']} must come from a Secret (valueFrom.secretKeyRef)")
                        checked.add(var["name"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= checked


def test_secret_references_match_the_example_secret():
    example = one(KUBERAY / "s3-secret.example.yaml")
    keys = set(example["stringData"])
    for path in (KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"):
        for env in env_lists(one(path)):
            for var in env:
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == example["metadata"]["name"] and not ref.get("optional"):
                    assert ref["key"] in keys, f"{path.name}: {ref['key']} is not in the example Secret"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert example["stringData"][key].startswith("REPLACE"), f"the example Secret holds a real-looking {key}"


def test_no_credentials_in_any_infra_file():
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for leak in LEAKS:
            assert not leak.search(text), f"{path.relative_to(ROOT)}: looks like a credential ({leak.pattern})"


def test_filled_in_secret_copies_are_git_ignored():
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True)
    if inside.returncode:
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", "infra/kuberay/s3-secret.yaml"], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "infra/kuberay/s3-secret.example.yaml"], cwd=ROOT).returncode


# --- the image ----------------------------------------------------------------------------------------------

WEIGHTS = re.compile(r"\.(safetensors|ckpt|bin|pt|pth|onnx|gguf)\b", re.I)
DOWNLOADS = re.compile(r"""from_pretrained\((?!['"]tiny['"])|snapshot_download|hf_hub_download|prefetch_model|"""
                       r"\bhf\s+download|"
                       r"huggingface-cli|\b(wget|curl)\b[^&;|]*https?://", re.I)


def test_dockerfile_never_bakes_weights():
    instructions = dockerfile_instructions()
    for kind, value in instructions:
        if kind in ("COPY", "ADD"):
            assert not WEIGHTS.search(value), f"{kind} {value}: weight files never go into the image"
            assert kind == "COPY", f"ADD {value}: use COPY (ADD fetches URLs and unpacks archives)"
        if kind == "RUN":
            assert not DOWNLOADS.search(value), f"RUN {value}: the image must not download models"
    ignored = {line.strip() for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()}
    for pattern in (".git", ".venv", "out", "masks", "**/*.safetensors", "**/*.ckpt", "**/*.bin", "**/*.pt",
                    "**/*.pth"):
        assert pattern in ignored, f"infra/Dockerfile.dockerignore must exclude {pattern}"


def test_dockerfile_keeps_the_base_images_torch():
    instructions = dockerfile_instructions()
    base = dockerfile_args()["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base), base
    assert [value for kind, value in instructions if kind == "FROM"] == ["${BASE_IMAGE}"]
    for kind, value in instructions:
        for step in re.split(r"&&|;", value) if kind == "RUN" else []:
            if "pip install" in step:
                assert not re.search(r"""(^|[\s"'])torch([=<>!~\[\s"']|$)""", step), f"RUN {step}: reinstalls torch"
    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "PIP_CONSTRAINT=" in env, "torch is pinned through a pip constraint file"


# --- the local multi-node script ----------------------------------------------------------------------------

SCRIPT = INFRA / "local-cluster.sh"


def test_local_cluster_script_is_valid_bash_with_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert len(SCRIPT.read_text().splitlines()) == 2, "a wrapper of infra/local_cluster.py: a shebang and an exec"
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("start", "status", "stop"):
        assert f"local-cluster.sh {command}" in shown


def dry_run(state: Path, *args: str) -> list[list[str]]:
    """The `ray start` command lines `start --dry-run` prints (no Ray needed: PATH without the venv)."""
    run = subprocess.run(["bash", str(SCRIPT), "start", *args, "--dry-run"], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "DIFFSEG_CLUSTER_DIR": str(state)})
    return [shlex.split(line) for line in run.stdout.splitlines()]


def option(words: list[str], name: str) -> str:
    assert words.count(name) == 1, f"{name} given {words.count(name)} times"
    return words[words.index(name) + 1]


NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")


def check_cluster(nodes: list[list[str]], state: Path, port: int) -> tuple[list[int], list[range]]:
    """Asserts the documented layout; returns every listening port of the nodes and their worker port ranges."""
    ports: list[int] = []
    ranges: list[range] = []
    for words in nodes:
        variables = dict(word.split("=", 1) for word in words[:2] if "=" in word)
        # The head's metrics servers, which `ray start` has no flags for, on ports of their own as well.
        assert set(variables) == ({"AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT"} if words is nodes[0] else set())
        ports += [int(port) for port in variables.values()]
        del words[:len(variables)]
        assert words[:3] == ["ray", "start", "--block"]
        assert option(words, "--node-ip-address") == "127.0.0.1"
        assert option(words, "--temp-dir") == f"{state}/ray", "all nodes share the cluster's own temp dir"
        ports += [int(option(words, name)) for name in NODE_PORTS]
        ranges.append(range(int(option(words, "--min-worker-port")), int(option(words, "--max-worker-port")) + 1))
    head, workers = nodes[0], nodes[1:]
    assert "--head" in head and option(head, "--port") == str(port)
    assert option(head, "--dashboard-host") == "127.0.0.1"
    assert option(head, "--num-cpus") == "0" and option(head, "--num-gpus") == "0"
    ports += [port, int(option(head, "--ray-client-server-port")), int(option(head, "--dashboard-port"))]
    for words in workers:
        assert "--head" not in words and option(words, "--address") == f"127.0.0.1:{port}"
    assert len(set(ports)) == len(ports), "two nodes share a port"
    for i, r in enumerate(ranges):
        assert len(r) == 1000
        assert not any(port in r for port in ports), "a worker port range holds a node's port"
        assert all(not set(r) & set(other) for other in ranges[i + 1:]), "worker port ranges overlap"
    return ports, ranges


def test_local_cluster_nodes_are_loopback_with_their_own_ports(tmp_path):
    nodes = dry_run(tmp_path, "--workers", "3", "--port", "7000")
    assert len(nodes) == 4
    check_cluster(nodes, tmp_path, 7000)


def listening(port: int) -> socket.socket | None:
    """A listener on `port` on every interface, as another program holding it; None when one already does."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_local_cluster_nodes_skip_ports_in_use(tmp_path):
    # The head's first node port and a port in the first worker's range are held by another program: the
    # nodes get other free ports instead of dying on "Address already in use" (what fixed offsets did).
    held = [7110, 21500]
    sockets = [listening(port) for port in held]
    try:
        nodes = dry_run(tmp_path, "--workers", "2", "--port", "7100", "--worker-port-base", "20000")
    finally:
        for sock in sockets:
            if sock is not None:
                sock.close()
    ports, ranges = check_cluster(nodes, tmp_path, 7100)
    assert 7110 not in ports
    assert int(option(nodes[0], "--node-manager-port")) > 7110, "the next free port above the one taken"
    assert not any(21500 in r for r in ranges)
    assert ranges[1].start > 21500


def test_local_cluster_refuses_a_gcs_port_in_use(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DIFFSEG_CLUSTER_DIR": str(tmp_path / "c")}
    try:
        run = subprocess.run(["bash", str(SCRIPT), "start", "--port", str(port)], capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    finally:
        sock.close()
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, env=env, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert f"{port}" in run.stderr and "in use" in run.stderr
    assert not (tmp_path / "c" / "pids").exists(), "nothing was started"


# --- the model prefetch -------------------------------------------------------------------------------------


def test_prefetch_fetches_exactly_what_the_loader_loads(monkeypatch, capsys):
    import huggingface_hub

    from diffseg.defaults import DEFAULT_MODEL
    from diffseg.model import HUB_FILES

    spec = importlib.util.spec_from_file_location("infra_prefetch_model", INFRA / "prefetch_model.py")
    prefetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prefetch)
    calls = []

    def fake(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return "/models/huggingface/hub/snapshot"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert prefetch.main([]) == 0
    assert calls == [(DEFAULT_MODEL, None, HUB_FILES)]
    assert capsys.readouterr().out.strip() == "/models/huggingface/hub/snapshot"

    def unavailable(*args, **kwargs):
        raise OSError("offline\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unavailable)
    assert prefetch.main(["some/model", "--revision", "v1"]) == 2
    assert "cannot fetch 'some/model'" in capsys.readouterr().err
