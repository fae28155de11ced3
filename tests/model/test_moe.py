import torch
import torch.nn.functional as F

from model.config import get_preset
from model.moe import MoE, Router


def _reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every token through its top-k experts one at a time: slow, obviously right."""
    flat = x.reshape(-1, x.shape[-1])
    top_idx, top_w, _ = moe.router(flat)
    H = moe.w_down.shape[1]
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for slot in range(top_idx.shape[1]):
            e = int(top_idx[n, slot])
            h = flat[n] @ moe.w_gate_up[e]
            out[n] += top_w[n, slot] * ((F.silu(h[:H]) * h[H:]) @ moe.w_down[e])
    return out.view_as(x)


def _moe(**changes) -> MoE:
    moe = MoE(get_preset("tiny", **changes))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return moe


def test_grouped_dispatch_equals_per_token_reference():
    moe = _moe()
    x = torch.randn(2, 12, 64)
    out, _ = moe(x)
    torch.testing.assert_close(out, _reference_moe(moe, x), atol=1e-5, rtol=1e-4)


def test_every_token_is_processed_by_exactly_k_experts():
    moe = _moe()
    N = 50
    x = torch.randn(1, N, 64)
    top_idx, top_w, stats = moe.router(x[0])
    assert top_idx.shape == (N, 2)
    assert all(len(set(row)) == 2 for row in top_idx.tolist())  # k distinct experts
    torch.testing.assert_close(top_w.sum(-1), torch.ones(N))
    assert int(stats.tokens_per_expert.sum()) == N * 2  # dropless: nothing dropped
    # perturbing one expert's weights changes exactly the tokens routed to it
    e = int(top_idx[0, 0])
    before, _ = moe(x)
    with torch.no_grad():
        moe.w_down[e] += 1.0
    after, _ = moe(x)
    touched = (before - after).abs().amax(-1)[0] > 0
    routed = (top_idx == e).any(-1)
    assert torch.equal(touched, routed)


def test_gradients_reach_every_expert_and_the_router():
    moe = _moe(n_shared_experts=1)
    out, stats = moe(torch.randn(4, 32, 64))
    (out.square().mean() + stats.aux_loss + stats.z_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    per_expert_gu = moe.w_gate_up.grad.abs().sum(dim=(1, 2))
    per_expert_down = moe.w_down.grad.abs().sum(dim=(1, 2))
    assert (per_expert_gu > 0).all() and (per_expert_down > 0).all()
    assert moe.shared.w1.weight.grad.abs().sum() > 0


def test_router_runs_in_float32_under_bf16_autocast():
    moe = _moe()
    x = torch.randn(1, 16, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, stats = moe(x)
        top_idx, top_w, _ = moe.router(x[0].bfloat16())
    assert top_w.dtype == torch.float32 and stats.aux_loss.dtype == torch.float32
    assert out.dtype == x.dtype


def test_load_balancing_loss_is_minimal_for_uniform_routing():
    alpha = 0.01
    router = Router(get_preset("tiny", aux_loss_weight=alpha))
    x = torch.randn(512, 64) + 0.5  # a shared direction a router can latch onto
    # uniform router probabilities: alpha * E * sum_i f_i / E = alpha, the minimum
    with torch.no_grad():
        router.weight.zero_()
    assert torch.isclose(router(x)[2].aux_loss, torch.tensor(alpha))
    # a router that favours expert 0 pays more
    with torch.no_grad():
        router.weight.normal_(std=0.02)
        router.weight[0] += 0.05
    skewed = router(x)[2]
    assert skewed.aux_loss > 1.2 * alpha
    # descending the loss alone moves routing back towards balance and the loss towards alpha
    opt = torch.optim.SGD(router.parameters(), lr=50.0)
    for _ in range(100):
        stats = router(x)[2]
        opt.zero_grad()
        stats.aux_loss.backward()
        opt.step()
    balanced = router(x)[2]
    assert balanced.aux_loss < skewed.aux_loss
    assert abs(balanced.aux_loss.item() - alpha) < 0.1 * alpha
    assert balanced.max_over_mean_load < skewed.max_over_mean_load
