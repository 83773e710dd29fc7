"""Overlapped: batches submitted without waiting give the label maps of `segment_batch`, with bounded memory."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from diffseg import DiffSeg
from diffseg.overlap import IN_FLIGHT, Overlapped, device_tensors
from diffseg.segmenter import Forward
from synthetic.photos import photo


class Counting(DiffSeg):
    """Counts batches started and not yet labeled, and fails on an image named "bad"."""

    def __init__(self, model):
        super().__init__(model)
        self.lock, self.unfinished, self.most = threading.Lock(), 0, 0

    def forward_batch(self, images, batch_size):
        with self.lock:
            self.unfinished += 1
            self.most = max(self.most, self.unfinished)
        if any(image.name == "bad" for image in images):
            raise RuntimeError("device error")
        return super().forward_batch(images, batch_size)

    def label_batch(self, images, maps):
        try:
            return super().label_batch(images, maps)
        finally:
            with self.lock:
                self.unfinished -= 1


@pytest.fixture(scope="module")
def prepared(tiny):
    return [tiny.prepare(photo(64, 64, seed=seed), name=str(seed)) for seed in range(6)]


@pytest.mark.parametrize("post_thread", [False, True])
def test_submitted_batches_give_the_label_maps_of_segment_batch_with_few_in_flight(tiny, prepared, post_thread):
    batches = [prepared[i:i + 2] for i in range(0, len(prepared), 2)]
    expected = [tiny.segment_batch(batch, 2) for batch in batches]  # first: replicas of one model share its capture
    segmenter = Counting(tiny.model)
    overlapped = Overlapped(segmenter.forward_batch, segmenter.label_batch, segmenter.device, ThreadPoolExecutor(1),
                            post_thread=post_thread)
    futures = [overlapped.submit(batch, 2) for batch in batches]
    for labels, wanted in zip(futures, expected, strict=True):
        # Exact: the same forward and post-processing, on other threads.
        for label, value in zip(labels, wanted, strict=True):
            assert torch.equal(label.result(timeout=60), value)
    assert 1 <= segmenter.most <= IN_FLIGHT


def test_a_failing_batch_fails_each_of_its_images_and_not_the_next_batch(tiny, prepared):
    segmenter = Counting(tiny.model)
    overlapped = Overlapped(segmenter.forward_batch, segmenter.label_batch, segmenter.device, ThreadPoolExecutor(1),
                            post_thread=True)
    bad = tiny.prepare(photo(96, 64, seed=0), name="bad")
    failed = overlapped.submit([prepared[0], bad], 2)
    after = overlapped.submit(prepared[2:4], 2)
    for future in failed:
        with pytest.raises(RuntimeError, match="device error"):
            future.result(timeout=60)
    assert all(isinstance(future.result(timeout=60), torch.Tensor) for future in after)


def test_only_device_tensors_are_kept_for_the_post_stream():
    # A CPU tensor has no stream to record (`record_stream` raises on it): a stand-in's CPU output is left out.
    output = [Forward([torch.zeros(2), torch.ones(3)], None), Forward(torch.zeros(1), torch.zeros(1))]
    assert device_tensors(output) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_post_processing_on_its_own_stream_gives_the_label_maps_of_segment_batch():
    segmenter = DiffSeg.from_pretrained("tiny", device="cuda")
    cuda_images = [segmenter.prepare(photo(64, 64, seed=seed), name=str(seed)) for seed in range(6)]
    batches = [cuda_images[i:i + 2] for i in range(0, len(cuda_images), 2)]
    expected = [segmenter.segment_batch(batch, 2) for batch in batches]
    overlapped = Overlapped(segmenter.forward_batch, segmenter.label_batch, segmenter.device, ThreadPoolExecutor(1))
    assert len(device_tensors(segmenter.forward_batch(batches[0], 2))) > 0
    futures = [overlapped.submit(batch, 2) for batch in batches]  # the second forward is queued during the first post
    for labels, wanted in zip(futures, expected, strict=True):
        # Exact: the post stream waits for its own forward's event, never reading a map before it is complete.
        for label, value in zip(labels, wanted, strict=True):
            assert torch.equal(label.result(timeout=120), value)
