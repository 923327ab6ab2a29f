"""The board's numpy PointNet++ backbone (host/pointnet_backbone.py) against model/pointnet2.py:
the same sampled and grouped indices, the same features to float32 rounding; point files."""
import numpy as np
import pytest
import torch

from host.errors import InputError, ManifestError
from host.pointcloud import PointCloudError, load_point_cloud
from host.pointnet_backbone import PointNetBackbone, farthest_point_sample, query_ball_point
from model import pointnet2 as tp
from model.registry import create_model


def clouds(b=2, n=256, c=3, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(b, n, c)).astype(np.float32)
    pts[..., :3] /= np.linalg.norm(pts[..., :3], axis=-1).max(-1)[:, None, None]
    return pts


def test_fps_and_ball_query_give_torchs_indices():
    pts = clouds(3, 300, seed=1)
    fps = farthest_point_sample(pts, 64)
    assert np.array_equal(fps, tp.farthest_point_sample(torch.from_numpy(pts), 64).numpy())
    centroids = pts[np.arange(3)[:, None], fps]
    for radius, k in ((0.2, 16), (0.4, 32), (0.05, 8), (3.0, 400)):   # sparse balls, padding, k > N
        got = query_ball_point(radius, k, pts, centroids)
        want = tp.query_ball_point(radius, k, torch.from_numpy(pts), torch.from_numpy(centroids)).numpy()
        assert np.array_equal(got, want), (radius, k)
    # a centroid far from every point: grouped with its nearest point (as the torch helper)
    far = np.full((3, 1, 3), 5.0, dtype=np.float32)
    assert np.array_equal(query_ball_point(0.1, 4, pts, far),
                          tp.query_ball_point(0.1, 4, torch.from_numpy(pts), torch.from_numpy(far)).numpy())


@pytest.mark.parametrize("in_chans", [3, 6])
def test_backbone_matches_pytorch(tmp_path, in_chans):
    torch.manual_seed(0)
    model = create_model("pointnet2_ssg_small", in_chans=in_chans).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):   # BN that does something
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.1)
    tp.export_backbone(model, tmp_path / "backbone.npz")
    bb = PointNetBackbone.load(tmp_path / "backbone.npz")
    pts = clouds(2, 256, in_chans, seed=2)
    xyz, feats = bb(pts)
    with torch.no_grad():
        t_xyz, t_feats = model.forward_backbone(torch.from_numpy(pts))
    assert np.array_equal(xyz, t_xyz.transpose(1, 2).numpy())          # same centroids, bit for bit
    # features: BN folded into the conv rounds once where torch rounds twice (float32 rounding only)
    np.testing.assert_allclose(feats, t_feats.transpose(1, 2).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=rf"expected \(B, N, {in_chans}\)"):
        bb(pts[..., :2])


def test_a_damaged_backbone_file_is_named(tmp_path):
    model = create_model("pointnet2_ssg_small").eval()
    arrays = tp.export_backbone(model, tmp_path / "ok.npz")
    np.savez(tmp_path / "no_sa2.npz", **{k: v for k, v in arrays.items() if not k.startswith("sa2.")})
    with pytest.raises(ManifestError, match=r"no_sa2.npz'.*sa2.npoint"):
        PointNetBackbone.load(tmp_path / "no_sa2.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ManifestError, match="junk.npz"):
        PointNetBackbone.load(tmp_path / "junk.npz")


def test_point_files_load_as_in_training(tmp_path):
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 6)).astype(np.float32)
    (tmp_path / "chair_0001.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    np.save(tmp_path / "chair.npy", rows)
    from_txt = load_point_cloud(tmp_path / "chair_0001.txt", 32, 3)
    from_npy = load_point_cloud(tmp_path / "chair.npy", 32, 3)
    assert from_txt.shape == (32, 3) and np.allclose(from_txt, from_npy, atol=1e-5)
    assert np.isclose(np.linalg.norm(from_npy, axis=1).max(), 1.0) and np.allclose(from_npy.mean(0), 0, atol=1e-6)
    with pytest.raises(PointCloudError, match="has 40 points, fewer than num_points=64"):
        load_point_cloud(tmp_path / "chair_0001.txt", 64)
    with pytest.raises(PointCloudError, match=r"shape \(40, 6\)"):
        load_point_cloud(tmp_path / "chair.npy", 64)
    with pytest.raises(PointCloudError, match=r"\.txt .* or \.npy"):
        load_point_cloud(tmp_path / "chair.ply", 32)
