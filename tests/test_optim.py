import torch

from lit_dft.optim import OptimizerArgs, configure_adamw


def test_adamw_is_fused_and_steps_as_the_reference_implementation():
    """The fused AdamW (one kernel, no weight-sized temporaries) moves the weights as torch's loop implementation
    does, decay on matrices only."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))]
    reference = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    args = OptimizerArgs(learning_rate=1e-2, weight_decay=0.1, warmup_ratio=0.0)
    optimizer = configure_adamw(weights, args, total_steps=10)["optimizer"]
    expected = torch.optim.AdamW(
        [{"params": reference[:1], "weight_decay": 0.1}, {"params": reference[1:], "weight_decay": 0.0}],
        lr=1e-2,
        betas=args.betas,
        foreach=False,
    )
    assert optimizer.defaults["fused"]
    for step in range(3):
        grads = [torch.randn(w.shape) for w in weights]
        for params, opt in ((weights, optimizer), (reference, expected)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for w, r in zip(weights, reference):
        torch.testing.assert_close(w, r, rtol=1e-6, atol=1e-7)


def test_loading_a_state_saved_by_another_implementation_keeps_this_optimizer_s():
    """A checkpoint from an unfused run (an older one, or ``16-mixed``) resumes fused, by any strategy's loading."""
    weight = torch.nn.Parameter(torch.randn(3, 2))
    weight.grad = torch.randn(3, 2)
    unfused = configure_adamw([weight], OptimizerArgs(), total_steps=4, fused=False)["optimizer"]
    unfused.step()
    fused = configure_adamw([weight], OptimizerArgs(), total_steps=4)["optimizer"]
    fused.load_state_dict(unfused.state_dict())
    assert all(group["fused"] for group in fused.param_groups)
    assert fused.state[weight]["exp_avg"].equal(unfused.state[weight]["exp_avg"])
    unfused.load_state_dict(fused.state_dict())
    assert not any(group["fused"] for group in unfused.param_groups)
