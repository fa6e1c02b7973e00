"""Lab 04's technique exercise: one step of logit distillation (Hinton et al. 2015).

    with no_grad: z_t = teacher(x)          the targets: no graph, no gradients
    z_s = student(x)
    L = loss_fn(z_s, z_t, T)                e.g. T^2 KL(p_t^T || p_s^T)
    zero the old gradients; L.backward(); optimizer.step()

Graded on what the step leaves behind, on tiny models: the loss it returns (before the
update), the student's parameters after it, and whether the teacher collected gradients.
The cases hand in a student holding stale gradients (a previous step's), as a training
loop would, so a step that forgets to clear them moves the weights elsewhere. The
reference equals one step of :func:`infer_lab.distill.distill`'s loop (loss "kd",
kd_weight 1, no clipping; cross-checked in the tests).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.DISTILLATION


def _kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
        temperature: float) -> torch.Tensor:
    """T^2 KL(p_t^T || p_s^T), mean over positions: the loss the cases pass in."""
    T = temperature
    log_p_t = F.log_softmax(teacher_logits / T, dim=-1)  # (..., V)
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


# -- reference ------------------------------------------------------------------------------
def distill_step(student: torch.nn.Module, teacher: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, x: torch.Tensor, temperature: float,
                 loss_fn: Callable = _kd) -> float:
    """One distillation step on token ids x (B, T); returns the loss before the update."""
    with torch.no_grad():
        t_logits = teacher(x)  # (B, T, V) targets: the teacher learns nothing
    s_logits = student(x)  # (B, T, V)
    loss = loss_fn(s_logits, t_logits, temperature)
    optimizer.zero_grad(set_to_none=True)  # the previous step's gradients must not add in
    loss.backward()
    optimizer.step()
    return loss.item()


# -- wrong answers ------------------------------------------------------------------------------
def _no_zero_grad(student, teacher, optimizer, x, temperature, loss_fn=_kd):
    with torch.no_grad():
        t_logits = teacher(x)
    loss = loss_fn(student(x), t_logits, temperature)
    loss.backward()  # adds to the stale gradients
    optimizer.step()
    return loss.item()


def _teacher_tracked(student, teacher, optimizer, x, temperature, loss_fn=_kd):
    t_logits = teacher(x)  # builds a graph through the teacher: it collects gradients
    loss = loss_fn(student(x), t_logits, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _swapped(student, teacher, optimizer, x, temperature, loss_fn=_kd):
    with torch.no_grad():
        t_logits = teacher(x)
    loss = loss_fn(t_logits, student(x), temperature)  # teacher and student swapped
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_first(student, teacher, optimizer, x, temperature, loss_fn=_kd):
    with torch.no_grad():
        t_logits = teacher(x)
    loss = loss_fn(student(x), t_logits, temperature)
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # before backward: nothing to apply
    loss.backward()
    return loss.item()


def _temperature_one(student, teacher, optimizer, x, temperature, loss_fn=_kd):
    return distill_step(student, teacher, optimizer, x, 1.0, loss_fn)


# -- grading: the loss, the student after the step, the teacher left alone ---------------------
class StepExercise(Exercise):
    """The answer is what the step did: [loss, teacher collected gradients (0/1), the
    student's parameters after the step...] as one float64 vector."""

    def _call(self, fn, case: Case) -> torch.Tensor:
        student, teacher, opt, x, T, loss_fn = copy.deepcopy(case.args)  # opt follows the copy
        for p, old in zip(student.parameters(), case.args[0].parameters()):
            p.grad = None if old.grad is None else old.grad.clone()  # deepcopy drops .grad
        got = fn(student, teacher, opt, x, T, loss_fn)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise TypeError(f"return the loss as a number (loss.item()), not "
                            f"{type(got).__name__}")
        tracked = any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                      for p in teacher.parameters())
        params = torch.cat([p.detach().double().flatten() for p in student.parameters()])
        return torch.cat([torch.tensor([float(got), float(tracked)], dtype=torch.float64),
                          params])

    def cases(self, seed: int | None = None) -> list[Case]:
        # The fixed cases hold optimizers, and the first optimizer made in a process
        # imports torch._dynamo (and with it Triton, a second of startup and its memory):
        # build them when the exercise is first graded, not when the registry loads.
        if not self.fixed_cases:
            self.fixed_cases = [_step_case(0), _step_case(1, T=1.0),
                                _step_case(2, 3, 5, 4.0, opt="wd"),
                                _step_case(3, 1, 12, 0.5, vocab=48)]
        return super().cases(seed)

    def describe(self, case: Case) -> str:
        student, teacher, opt, x, T, _ = case.args

        def model(m):
            return f"<{m.config.n_layer}-layer d_model {m.config.d_model}>"

        group = {k: v for k, v in opt.param_groups[0].items() if k in ("lr", "momentum",
                                                                       "weight_decay")}
        return (f"{self.name}(student={model(student)}, teacher={model(teacher)}, "
                f"optimizer={type(opt).__name__}{group}, x=<ids {tuple(x.shape)}>, "
                f"temperature={T:g}, loss_fn=kd_loss)")

    def mismatch(self, case: Case, got: torch.Tensor) -> str | None:
        want = self._call(self.reference, case)
        if not torch.isclose(got[0], want[0], rtol=self.rtol, atol=self.atol):
            return f"returned loss {got[0].item():.6g}, expected {want[0].item():.6g}"
        if got[1] != want[1]:
            return "the teacher collected gradients: its forward built a graph"
        err = (got[2:] - want[2:]).abs()
        if not torch.allclose(got[2:], want[2:], rtol=self.rtol, atol=self.atol):
            return (f"the student's parameters after the step differ from the reference's "
                    f"(largest difference {err.max().item():.3g}; "
                    f"{int((err > self.atol).sum())} of {err.numel()} values)")
        return None


def _tiny(seed: int, d: int, layers: int, vocab: int):
    from ..config import get_config
    from ..model import Transformer

    torch.manual_seed(seed)
    cfg = get_config("code-s", n_layer=layers, d_model=d, n_head=2, n_kv_head=2, d_ff=2 * d,
                     vocab_size=vocab, max_seq_len=32)
    return Transformer(cfg)


def _step_case(seed: int, batch: int = 2, seq: int = 8, T: float = 2.0, vocab: int = 32,
               opt: str = "sgd") -> Case:
    """A student (holding a previous step's gradients), a larger teacher, an optimizer over
    the student's parameters, a batch of ids and the temperature."""
    student, teacher = _tiny(seed, 16, 1, vocab).train(), _tiny(seed + 1, 32, 2, vocab).eval()
    g = torch.Generator().manual_seed(seed)
    for p in student.parameters():
        p.grad = 0.1 * torch.randn(p.shape, generator=g)  # stale: the last step's
    params = list(student.parameters())
    optimizer = (torch.optim.SGD(params, lr=0.5, momentum=0.9) if opt == "sgd" else
                 torch.optim.SGD(params, lr=0.3, weight_decay=0.1))
    x = torch.randint(vocab, (batch, seq), generator=g)  # (B, T)
    return Case((student, teacher, optimizer, x, T, _kd))


def _random_step_case(rng: random.Random) -> Case:
    return _step_case(rng.randrange(2**20), rng.randint(1, 3), rng.randint(2, 12),
                      rng.choice([0.5, 1.0, 2.0, 4.0]), rng.choice([16, 32, 48]),
                      rng.choice(["sgd", "sgd-wd"]))


STEP_EXERCISES = [
    StepExercise(
        "distill_step", LAB, distill_step, kind="technique",
        fixed_cases=[],  # built on first use: see StepExercise.cases
        random_case=_random_step_case, n_random=4,
        rtol=1e-5, atol=1e-7,
        hint="Run the teacher without recording a graph (its outputs are fixed targets), run "
             "the student, compare their logits with loss_fn at the given temperature, clear "
             "the gradients left from the previous step, backpropagate, then let the "
             "optimizer update the student. Return the loss as a number.",
        code_hint="with torch.no_grad(): t = teacher(x); loss = loss_fn(student(x), t, "
                  "temperature); optimizer.zero_grad(); loss.backward(); optimizer.step(); "
                  "return loss.item()",
        mistakes=[
            Mistake("no zero_grad", _no_zero_grad,
                    "Gradients accumulate in .grad: without clearing them first, the previous "
                    "step's gradients are applied again with this one's."),
            Mistake("teacher tracked", _teacher_tracked,
                    "The teacher's forward must run without autograd: it is a fixed target, "
                    "and tracking it spends memory and fills the teacher's .grad."),
            Mistake("student and teacher swapped", _swapped,
                    "loss_fn takes the student's logits first and the teacher's second."),
            Mistake("step before backward", _step_first,
                    "The optimizer applies the gradients in .grad: call it after backward has "
                    "computed them, not before."),
            Mistake("temperature ignored", _temperature_one,
                    "Pass the given temperature to the loss; both distributions are softened "
                    "by it."),
        ],
    ),
]
