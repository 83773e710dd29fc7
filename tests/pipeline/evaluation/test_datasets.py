"""Reading COCO-Stuff-27 and Cityscapes from folders laid out as the real datasets unpack."""

import numpy as np
import pytest
import s3fs
from PIL import Image

from pipeline.evaluation.datasets import COCO_STUFF_27, IGNORE, join_key, open_dataset
from pipeline.store.inputs import InputError
from synthetic.datasets import cityscapes, coco_stuff


def test_coco_stuff_pairs_images_with_annotations_and_maps_fine_to_coarse(tmp_path):
    ids = coco_stuff(tmp_path)
    dataset = open_dataset("coco-stuff-27", str(tmp_path))
    assert [e.image_id for e in dataset.examples] == [f"{i}.jpg" for i in ids]
    assert dataset.examples[0].label == f"annotations/val2017/{ids[0]}.png"
    assert dataset.num_classes == 27 and dataset.kl_threshold == 1.1
    label = dataset.read_label(dataset.examples[0])
    assert label.shape == (64, 96)
    names = list(COCO_STUFF_27)
    # fine ids 0 (person), 156 (sky-other), 123 (grass) and 255 (unlabeled)
    assert set(np.unique(label)) == {names.index("person"), names.index("sky"), names.index("plant"), IGNORE}


def test_the_coco_stuff_hierarchy_covers_every_fine_class_once():
    fine = sorted(i for ids in COCO_STUFF_27.values() for i in ids)
    assert fine == list(range(182)) and len(COCO_STUFF_27) == 27
    assert COCO_STUFF_27["person"] == (0,) and 105 in COCO_STUFF_27["sky"]  # 105: clouds


def test_cityscapes_maps_label_ids_7_to_33_and_ignores_the_rest(tmp_path):
    ids = cityscapes(tmp_path)
    dataset = open_dataset("cityscapes", str(tmp_path))
    assert [e.image_id for e in dataset.examples] == ids
    assert dataset.examples[0].label == "gtFine/val/frankfurt/frankfurt_000000_000000_gtFine_labelIds.png"
    assert dataset.kl_threshold == 0.9 and dataset.class_names[0] == "road" and dataset.class_names[26] == "bicycle"
    label = dataset.read_label(dataset.examples[1])
    assert set(np.unique(label)) == {0, 16, 19, IGNORE}  # road 7, sky 23, car 26, unlabeled 0
    assert dataset.lookup[33] == 26 and dataset.lookup[34] == IGNORE and dataset.lookup[6] == IGNORE


def test_an_image_list_selects_and_orders_images(tmp_path):
    ids = coco_stuff(tmp_path / "coco")
    listing = tmp_path / "Coco164kFull_Stuff_Coarse_7.txt"
    listing.write_text(f"# curated\n{ids[2]}\n\n{ids[0]}.jpg\nval2017/{ids[2]}\n")
    dataset = open_dataset("coco-stuff-27", str(tmp_path / "coco"), image_list=str(listing))
    assert [e.key for e in dataset.examples] == [ids[2], ids[0]]
    listing.write_text("000000000999\n")
    with pytest.raises(InputError, match="1 listed image\\(s\\) are not in the dataset, e.g. '000000000999'"):
        open_dataset("coco-stuff-27", str(tmp_path / "coco"), image_list=str(listing))
    with pytest.raises(InputError, match="cannot read the image list"):
        open_dataset("coco-stuff-27", str(tmp_path / "coco"), image_list=str(tmp_path / "missing.txt"))


def test_unusable_folders_are_refused_in_one_line(tmp_path):
    with pytest.raises(InputError, match="no images under .*images/val2017 \\(is --root the dataset's folder\\?\\)"):
        open_dataset("coco-stuff-27", str(tmp_path))
    ids = coco_stuff(tmp_path)
    (tmp_path / "annotations" / "val2017" / f"{ids[1]}.png").unlink()
    with pytest.raises(InputError, match=f"1 image\\(s\\) have no label file, e.g. .*{ids[1]}.png"):
        open_dataset("coco-stuff-27", str(tmp_path))
    with pytest.raises(InputError, match="dataset must be one of coco-stuff-27, cityscapes"):
        open_dataset("ade20k", str(tmp_path))


def test_a_label_that_is_not_a_class_map_is_a_value_error(tmp_path):
    ids = coco_stuff(tmp_path)
    Image.new("RGB", (96, 64)).save(tmp_path / "annotations" / "val2017" / f"{ids[0]}.png")
    (tmp_path / "annotations" / "val2017" / f"{ids[1]}.png").write_bytes(b"not a png")
    dataset = open_dataset("coco-stuff-27", str(tmp_path))
    with pytest.raises(ValueError, match="label image has mode RGB"):
        dataset.read_label(dataset.examples[0])
    with pytest.raises(ValueError, match="cannot decode the label image"):
        dataset.read_label(dataset.examples[1])


def test_join_keys_are_file_names_without_extension():
    assert join_key("frankfurt/frankfurt_000000_000294_leftImg8bit.png") == "frankfurt_000000_000294_leftImg8bit"
    assert join_key("shard.tar/000000000139.jpg") == "000000000139" == join_key("000000000139")


@pytest.mark.integration
def test_a_dataset_on_s3(tmp_path, bucket):
    ids = coco_stuff(tmp_path)
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(tmp_path) + "/", f"{bucket}/coco/", recursive=True)
    dataset = open_dataset("coco-stuff-27", f"s3://{bucket}/coco")
    assert [e.key for e in dataset.examples] == ids
    assert dataset.read_image(dataset.examples[0]) == (tmp_path / "images" / "val2017" / f"{ids[0]}.jpg").read_bytes()
    assert dataset.read_label(dataset.examples[0]).shape == (64, 96)
