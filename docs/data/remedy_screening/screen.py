"""Throwaway screening of remedies (see README.md here); not part of the package."""
import sys, time, json, numpy as np, torch
from sklearn.datasets import load_digits
from horovod_scalecom.reference.core import accumulate, topk_indices, gather_and_update, scatter, F32
from horovod_scalecom.config import ScaleComConfig
from horovod_scalecom.schedule import leader
from horovod_scalecom.reference.horovod_path import allreduce_mean

def data(seed=0):
    d = load_digits(); x = (d.data / 16.0).astype(np.float32); y = d.target.astype(np.int64)
    perm = np.random.default_rng(12345).permutation(len(x)); x, y = x[perm], y[perm]
    return x[:1200], y[:1200], x[1200:], y[1200:]

def model(kind, seed):
    torch.manual_seed(seed)
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(64*16, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

def run(kind="mlp", n=4, lr=0.4, ratio=0.01, beta=0.1, remedy="none", kappa=2.0, rho=0.9, seed=0, epochs=30, b=16, lr_warm=0, warm=0, raw=False, trace=False, tag=""):
    from torch.func import functional_call, grad_and_value, vmap
    x, y, xt, yt = map(torch.from_numpy, data())
    m = model(kind, seed); opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    steps_per_epoch = len(x) // (n*b); total = epochs*steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s+1)/max(lr_warm,1)) * 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))
    def loss_fn(p, xb, yb): return torch.nn.functional.cross_entropy(functional_call(m, p, (xb,)), yb)
    wg = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
    cfg = ScaleComConfig(ratio=ratio, beta=beta)
    names = [k for k, p in m.named_parameters()]
    comp = [k for k, p in m.named_parameters() if p.numel() >= 1024]
    mem = {k: [np.zeros(dict(m.named_parameters())[k].numel(), F32) for _ in range(n)] for k in comp}
    level = {k: [None]*n for k in comp}; clipped = 0; t = 0
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000*seed+ep))
        for i in range(steps_per_epoch):
            bt = perm[i*n*b:(i+1)*n*b]
            params = {k: v.detach() for k, v in m.named_parameters()}
            grads, losses = wg(params, x[bt].view(n, b, -1), y[bt].view(n, b))
            for off, (k, p) in enumerate(m.named_parameters()):
                g = [a.reshape(-1).numpy().astype(F32) for a in grads[k]]
                if remedy == "dense" or k not in comp:
                    out = allreduce_mean(g)
                else:
                    if remedy == "absclip":
                        g = [gi * F32(min(1.0, kappa / (np.linalg.norm(gi.astype(np.float64)) + 1e-6))) for gi in g]
                    if remedy == "relclip":
                        for r in range(n):
                            nrm = float(np.sqrt(np.cumsum(g[r].astype(np.float64)**2)[-1]))
                            L = level[k][r]
                            if L is None: level[k][r] = nrm; continue
                            lim = kappa * L
                            if nrm > lim: g[r] = g[r] * F32(lim / nrm); clipped += 1
                            level[k][r] = rho * L + (1 - rho) * (nrm if raw else min(nrm, lim))
                    if remedy == "warmup" and t < warm:
                        p.grad = torch.from_numpy(allreduce_mean(g).reshape(p.shape)); continue
                    lead = leader(t, off, n)
                    idx = topk_indices(accumulate(mem[k][lead], g[lead]), cfg.k(g[0].size))
                    vals = []
                    for r in range(n):
                        m_old = mem[k][r]
                        c, mem[k][r] = gather_and_update(mem[k][r], g[r], idx, cfg.beta)
                        if remedy == "sendclip":
                            nc = np.linalg.norm(c.astype(np.float64)); ng = np.linalg.norm(g[r].astype(np.float64))
                            if nc > kappa * ng:
                                sc = F32(kappa * ng / nc); clipped += 1
                                mem[k][r][idx] = mem[k][r][idx] + F32(cfg.beta) * (F32(1) - sc) * c
                                c = c * sc
                        vals.append(c)
                        if remedy == "memclip":
                            nm = np.linalg.norm(mem[k][r].astype(np.float64)); ng = np.linalg.norm(g[r].astype(np.float64))
                            if nm > kappa * ng: mem[k][r] = mem[k][r] * F32(kappa * ng / nm); clipped += 1
                    out = scatter(idx, allreduce_mean(vals), g[0].size)
                p.grad = torch.from_numpy(out.reshape(p.shape))
            if trace and t % 6 == 0:
                k0 = comp[0]; gg = np.linalg.norm(grads[k0][0].reshape(-1).numpy()); mm = np.linalg.norm(mem[k0][0]); oo = dict(m.named_parameters())[k0].grad.norm().item()
                k1 = comp[-1]; g1 = np.linalg.norm(grads[k1][0].reshape(-1).numpy()); m1 = np.linalg.norm(mem[k1][0])
                print(f"t={t} loss={losses.mean().item():.3f} {k0}: g={gg:.3f} m={mm:.3f} out={oo:.3f} | {k1}: g={g1:.3f} m={m1:.3f}", file=sys.stderr)
            opt.step(); sched.step(); t += 1
    with torch.no_grad():
        acc = (m(xt).argmax(1) == yt).float().mean().item()
    return acc, clipped / max(1, t*len(comp)*n)

if __name__ == "__main__":
    # One run: its arguments as a JSON object (see README.md).
    kw = json.loads(sys.argv[1]); t0 = time.time(); torch.set_num_threads(1)
    acc, cf = run(**kw); print(json.dumps(dict(kw, acc=round(acc, 4), clipfrac=round(cf, 3), s=round(time.time()-t0))), flush=True)
