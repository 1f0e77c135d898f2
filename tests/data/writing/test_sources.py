import pytest
import trimesh

from recon3d.config import load_config
from recon3d.data import schema
from recon3d.data.loading.shards import read_tar
from recon3d.data.writing.sources import assign_split, detect_kind, discover
from recon3d.data.writing.writer import build_shards
from tests.conftest import tiny_config

BOX = trimesh.creation.box((1, 2, 1))


def _source(root, *extra):
    return load_config([], [f"source.root={root}", *extra]).source


def test_shapenet_v1_and_v2_with_synset_names(tmp_path):
    for rel in ("03001627/abc/model.obj", "02691156/def/models/model_normalized.obj", "04379243/ghi/readme.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(trimesh.exchange.obj.export_obj(BOX) if rel.endswith(".obj") else "x")
    items, rejects, kind = discover(_source(tmp_path))
    assert kind == "shapenet"
    assert [i.key for i in items] == ["airplane/def", "chair/abc"]
    assert rejects[0]["key"] == "table/ghi" and "model_normalized.obj" in rejects[0]["reason"]


def test_modelnet_keeps_its_split_and_is_z_up(tmp_path):
    for rel in ("chair/train/chair_0001.off", "chair/test/chair_0002.off", "desk/train/desk_0001.off"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(trimesh.exchange.off.export_off(BOX))
    items, _, kind = discover(_source(tmp_path))
    assert kind == "modelnet" and all(i.up == "+z" for i in items)
    by_key = {i.key: i for i in items}
    assert assign_split(by_key["chair/chair_0002"], (0.8, 0.1, 0.1)) == "test"
    assert assign_split(by_key["chair/chair_0001"], (0.8, 0.1, 0.1)) in ("train", "val")


def test_folder_categories_nested_ids_and_safe_keys(tmp_path):
    for rel in ("lamp/a.obj", "lamp/sub/b.stl", "loose.ply", "lamp/notes.md", "chaise longue/siège.obj"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items, _, kind = discover(_source(tmp_path))
    keys = [i.key for i in items]
    assert kind == "folder" and len(keys) == 4
    assert "lamp/a" in keys and "uncategorized/loose" in keys
    assert all("." not in k and " " not in k and k.isascii() for k in keys)
    assert len({schema.safe_name("a b"), schema.safe_name("a_b"), schema.safe_name("a.b")}) == 3


def test_category_filter_and_limit(tmp_path):
    for rel in ("a/1.obj", "a/2.obj", "a/3.obj", "b/1.obj"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items, _, _ = discover(_source(tmp_path, "source.categories=[a]", "source.limit_per_category=2"))
    assert [i.key for i in items] == ["a/1", "a/2"]


def test_binvox_folder_becomes_samples(tmp_path):
    from tests.conftest import shared_path

    ref = shared_path("reference", "binvox_pair", "chair_model.binvox")
    (tmp_path / "src" / "chair").mkdir(parents=True)
    (tmp_path / "src" / "chair" / "one.binvox").write_bytes(ref.read_bytes())
    out = tmp_path / "out"
    result = build_shards(tiny_config(f"source.root={tmp_path / 'src'}", f"shards.out_dir={out}",
                                      "shards.split=[1,0,0]"), progress=False)
    assert detect_kind(tmp_path / "src") == "folder" and result.manifest["samples"] == 1
    voxels = schema.unpack_voxels(read_tar(out / "train-000000.tar")["chair/one"][schema.VOXELS])
    interior = voxels[1:-1, 1:-1, 1:-1] & voxels[:-2, 1:-1, 1:-1] & voxels[2:, 1:-1, 1:-1] & \
        voxels[1:-1, :-2, 1:-1] & voxels[1:-1, 2:, 1:-1] & voxels[1:-1, 1:-1, :-2] & voxels[1:-1, 1:-1, 2:]
    assert interior.any()  # the binvox shell became a solid with an inside, not a one-voxel crust


def test_front_axis_is_recorded_with_where_it_came_from(tmp_path):
    """The assumed front, a global front_axis and a per-category override each show in the metadata and summary."""
    from recon3d.data.tools.verify import summarise

    for rel in ("chair/a.obj", "sofa/b.obj", "table/c.obj"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_text(trimesh.exchange.obj.export_obj(BOX))
    items, _, _ = discover(_source(tmp_path / "in", "source.front_by_category={chair: +z}"))
    assert {i.key: (i.front, i.front_from) for i in items} == {
        "chair/a": ("+z", "source.front_by_category"), "sofa/b": ("-z", "assumed"), "table/c": ("-z", "assumed")}
    items, _, _ = discover(_source(tmp_path / "in", "source.front_axis=+x"))
    assert {i.front_from for i in items} == {"source.front_axis"}
    cfg = tiny_config(f"source.root={tmp_path / 'in'}", f"shards.out_dir={tmp_path / 'out'}",
                      "source.front_by_category={chair: +z}")
    build_shards(cfg, progress=False)
    tars = sorted((tmp_path / "out").glob("*.tar"))
    metas = {k: schema.decode_meta(m) for tar in tars for k, m in read_tar(tar).items()}
    assert metas["chair/a"]["front"] == "+z" and metas["sofa/b"]["front_from"] == "assumed"
    assert metas["chair/a"]["voxel_rule"] == "shapenet" and metas["chair/a"]["surface_coverage"] == 1.0
    text = summarise(tmp_path / "out")
    assert "front +z (source.front_by_category): chair" in text and "front -z (assumed): sofa, table" in text
    assert "rule shapenet" in text and "min 1.000" in text


def test_summary_of_old_shards_and_flagged_coverage(tmp_path, tiny_shards):
    """Shard sets from before the rule was recorded summarise as the fill rule; low coverage is listed by key."""
    import json
    import shutil

    from recon3d.data.tools.verify import summarise

    copy = tmp_path / "old"
    shutil.copytree(tiny_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["config"]["geometry"]["voxel_rule"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    side_path = sorted(copy.glob("train-*.json"))[0]
    side = json.loads(side_path.read_text())
    key = side["keys"][0]
    side["facts"][key].update(surface_coverage=0.5, low_coverage=True)
    side_path.write_text(json.dumps(side))
    text = summarise(copy)
    assert "rule fill" in text and "min 0.500" in text and f"{key}: 0.500" in text and "coverage_warn=0.95: 1" in text


def test_front_by_category_rejects_a_bad_axis():
    from recon3d.errors import ConfigError

    with pytest.raises(ConfigError, match="front_by_category.chair"):
        _source("x", "source.front_by_category={chair: front}")
    with pytest.raises(ConfigError, match="on the up axis"):
        _source("x", "source.up_axis=+y", "source.front_by_category={chair: -y}")


def test_split_by_category_cuts_every_category_in_proportion():
    from recon3d.data.writing.sources import Item, assign_splits

    items = [Item(f"{c}/{c}_{i:03d}", f"{c}/{i}.obj", "mesh") for c in ("chair", "lamp") for i in range(32)]
    items.append(Item("lamp/lamp_900", "x.off", "mesh", split="test"))  # a source's own split stays
    items += [Item(f"desk/d{i}", f"d{i}.off", "mesh", split="train") for i in range(10)]  # val carved out of train
    splits = assign_splits(items, (0.7, 0.1, 0.2), by="category")
    count = lambda c, s: sum(1 for k, v in splits.items() if k.startswith(c) and v == s)  # noqa: E731
    assert [count("chair", s) for s in ("train", "val", "test")] == [22, 4, 6]
    assert [count("lamp", s) for s in ("train", "val", "test")] == [22, 4, 7]  # 6 cut + its own test shape
    assert splits["lamp/lamp_900"] == "test"
    assert [count("desk", s) for s in ("train", "val", "test")] == [9, 1, 0]
    assert assign_splits(list(reversed(items)), (0.7, 0.1, 0.2), by="category") == splits  # order-free
    by_hash = assign_splits(items, (0.7, 0.1, 0.2))
    assert by_hash == {i.key: assign_split(i, (0.7, 0.1, 0.2)) for i in items}
    # the category cut follows the hash order: the lowest-hash shapes train, as they do by hash
    from recon3d.data.schema import key_hash

    chairs = sorted((k for k in splits if k.startswith("chair/")), key=key_hash)
    assert [splits[k] for k in chairs] == ["train"] * 22 + ["val"] * 4 + ["test"] * 6


def test_split_counts_round_cumulative_shares_and_keep_every_split_when_they_can():
    from recon3d.data.writing.sources import split_counts

    assert split_counts(32, (0.7, 0.1, 0.2)) == [22, 4, 6]
    assert split_counts(40, (0.7, 0.1, 0.2)) == [28, 4, 8]
    assert split_counts(3, (0.5, 0.25, 0.25)) == [1, 1, 1]  # rounding alone gives 2/0/1
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]  # too few to give each split one
    assert split_counts(10, (0.7, 0.1, 0.0)) == [9, 1, 0] and split_counts(0, (0.8, 0.1, 0.1)) == [0, 0, 0]


def test_a_test_list_puts_its_shapes_in_test_and_cuts_the_rest_into_train_and_val(tmp_path):
    """source.test_list names a benchmark's test shapes (IM-NET's file lists synset/id): they go to test, the others
    to train and val in shards.split's train : val proportions; a list naming none of the shapes is an error."""
    from recon3d.data.writing.sources import assign_splits

    for i in range(20):
        path = tmp_path / "src" / "03001627" / f"id{i:02d}" / "model.obj"
        path.parent.mkdir(parents=True)
        path.write_text(trimesh.exchange.obj.export_obj(BOX))
    listing = tmp_path / "test.txt"
    listing.write_text("# IM-NET's test list\n03001627/id03\n03001627/id07\n\nid11\n")
    source = _source(tmp_path / "src", f"source.test_list={listing}")
    items, _, _ = discover(source)
    splits = assign_splits(items, (0.75, 0.05, 0.2), by="category")
    assert sorted(k for k, s in splits.items() if s == "test") == ["chair/id03", "chair/id07", "chair/id11"]
    assert sum(s == "val" for s in splits.values()) == 1 and sum(s == "train" for s in splits.values()) == 16
    listing.write_text("02691156/nothing_here\n")
    with pytest.raises(ValueError, match="names none of the source's shapes"):
        discover(source)
    with pytest.raises(FileNotFoundError, match="source.test_list='.*missing.txt': no such file"):
        discover(_source(tmp_path / "src", f"source.test_list={tmp_path / 'missing.txt'}"))


def test_a_mesh_1200_folders_deep_is_found(tmp_path):
    top = folder = tmp_path / "src" / "lamp"
    top.mkdir(parents=True)
    for _ in range(1200):  # one level at a time: os.makedirs itself recurses
        folder = folder / "d"
        folder.mkdir()
    (folder / "tall.obj").write_text(trimesh.exchange.obj.export_obj(BOX))
    try:
        items, rejects, _ = discover(_source(tmp_path / "src"))
        assert [i.key.split("/")[0] for i in items] == ["lamp"] and not rejects  # Python 3.11's os.walk overflowed
    finally:  # removed bottom up: shutil.rmtree (pytest's cleanup) recurses too
        (folder / "tall.obj").unlink()
        while folder != top:
            folder.rmdir()
            folder = folder.parent
