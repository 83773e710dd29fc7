"""How many actors a cluster can host, decided before any actor is started."""

import pytest

from pipeline.execution.capacity import GIB, ActorShape, JobError, Node, actor_shape, fit, hostable


def node(cpus: float, gpus: float = 0, memory_gib: float = 16, name: str = "10.0.0.1") -> Node:
    return Node(name, cpus, gpus, memory_gib * GIB)


def free(*nodes: Node) -> dict[str, float]:
    return {"CPU": sum(n.cpus for n in nodes), "GPU": sum(n.gpus for n in nodes),
            "memory": sum(n.memory for n in nodes)}


def test_an_actor_never_spans_nodes():
    nodes = [node(3), node(3)]
    assert hostable(ActorShape(2, 0, GIB), nodes, free(*nodes)) == 2, "6 CPUs in all, but 3 + 3 host one each"


def test_every_resource_limits_the_actors_of_a_node():
    assert ActorShape(2, 1, 4 * GIB).per_node(cpus=16, gpus=8, memory=64 * GIB) == 8
    assert ActorShape(2, 1, 4 * GIB).per_node(cpus=6, gpus=8, memory=64 * GIB) == 3
    assert ActorShape(2, 1, 4 * GIB).per_node(cpus=16, gpus=8, memory=10 * GIB) == 2
    assert ActorShape(1, 0.5, 0).per_node(cpus=16, gpus=1, memory=0) == 2, "fractions share a GPU; 0 reserves none"


def test_what_is_taken_elsewhere_in_the_cluster_is_not_hostable_now():
    nodes = [node(8), node(8)]
    assert hostable(ActorShape(2, 0, GIB), nodes, {"CPU": 5, "GPU": 0, "memory": 32 * GIB}) == 2


def test_defaults_use_the_gpus_with_their_cpus_when_there_are_some_and_whole_nodes_otherwise():
    gpu_cluster = [node(0, name="head"), node(8, 1), node(96, 8)]
    assert actor_shape(gpu_cluster, "sd") == ActorShape(8, 1, 4 * GIB), "the CPUs that come with a GPU"
    assert actor_shape(gpu_cluster, "sd", gpus_per_actor=0.5).cpus == 4
    assert actor_shape([node(2)], "sd", gpus_per_actor=1).cpus == 2, "no GPU node to take the shape from"
    cpu_cluster = [node(0, name="head"), node(4), node(8)]
    assert actor_shape(cpu_cluster, "sd") == ActorShape(4, 0, 6 * GIB), "the smallest node with CPUs"
    assert actor_shape(cpu_cluster, "tiny").memory == 2 * GIB
    assert actor_shape(cpu_cluster, "sd", gpus_per_actor=0.5, cpus_per_actor=1, memory_per_actor=0) == \
        ActorShape(1, 0.5, 0)


def test_the_default_count_is_what_fits_now_and_never_more_than_the_shards():
    nodes = [node(8, 2), node(4, 2)]
    shape = ActorShape(2, 1, 4 * GIB)
    assert fit(shape, nodes, free(*nodes), None, 100, autoscaling=False).count == 4
    assert fit(shape, nodes, free(*nodes), None, 3, autoscaling=False).count == 3


def test_more_actors_than_fit_are_refused_with_the_numbers_and_the_fix():
    nodes = [node(2, memory_gib=15.5, name="127.0.0.1")]
    with pytest.raises(JobError) as refused:
        fit(ActorShape(2, 0, GIB), nodes, free(*nodes), 2, 10, autoscaling=False)
    assert str(refused.value) == (
        "--num-actors 2: the cluster can host 1 actor(s) of 2 CPU(s), 0 GPU(s) and 1 GiB memory now "
        "(node 127.0.0.1: 2 CPU, 0 GPU, 15.5 GiB; free: 2 CPU, 0 GPU, 15.5 GiB); try --num-actors 1, a smaller "
        "--cpus-per-actor, or --startup-timeout to let an autoscaler add nodes")


def test_only_the_resources_that_fall_short_are_named_as_fixes():
    nodes = [node(16, memory_gib=8), node(16, memory_gib=8)]
    with pytest.raises(JobError, match=r"try --num-actors 2, a smaller --memory-per-actor, or --startup-timeout"):
        fit(ActorShape(1, 0, 6 * GIB), nodes, free(*nodes), 4, 10, autoscaling=False)


def test_gpu_actors_on_a_cluster_without_gpus_are_refused_with_the_cpu_fix():
    nodes = [node(8)]
    with pytest.raises(JobError, match=r"^the cluster can host 0 actor\(s\) of 2 CPU\(s\), 1 GPU\(s\).*; try "
                                       r"--gpus-per-actor 0 \(CPU actors\), or --startup-timeout"):
        fit(ActorShape(2, 1, 0), nodes, free(*nodes), None, 10, autoscaling=False)


def test_an_autoscaling_cluster_gets_the_request_and_scales_for_it():
    nodes = [node(0, name="head")]
    shape = ActorShape(2, 1, 4 * GIB)
    assert fit(shape, nodes, free(*nodes), 4, 10, autoscaling=True).count == 4
    assert fit(shape, nodes, free(*nodes), None, 10, autoscaling=True).count == 1, "one actor brings the first node"
