r"""`make demo-ssr`: the whole SSR pipeline on this CPU, on the embedded corpus, in about seven minutes.

  python -m ssr.demo --workdir=runs/demo-ssr

1. Pre-train the generator, a tiny T5, with span corruption (spactor.train, gin/ssr/demo_generator.gin).
2. Pre-train the student, a smaller `micro` T5, the same way (gin/ssr/demo_student.gin): the paper's setting, a
   released T5-base continually pre-trained on the rewrites of a larger T5.
3. Mask SSR spans in the corpus and fill them with the generator (ssr.generate, nucleus p = 0.9).
4. Continually pre-train the student with SSR and the loss+length curriculum, and, for the same steps, with span
   corruption (T5-cont) and with DistilT5 (infilling with the generator's fills as targets) (ssr.continual,
   gin/ssr/{ssr,sc_cont,distill_cont,cpu}.gin and the micro model).
5. Print the validation losses of all three on both objectives.

With --generator_study, the generator-size study of the paper's Table 5 as well: the student's own checkpoint (a
generator no larger than the student, as T5-base rewriting for SSR-base) fills the same masked pieces, and the
student is trained with SSR on those rewrites too.

Every step runs as the command a user would type (printed before it runs) and is skipped or resumed when its
output already exists, so running the demo again continues where it stopped.
"""
import argparse
import json
import os
import subprocess
import sys
import time

GENERATOR_STEPS = 1000
STUDENT_STEPS = 400
STUDENT_MODEL_GIN = "gin/models/t5_1_0_micro.gin"
INPUTS_LENGTH = 128
CONTINUAL_STEPS = 200
BATCH_SIZE = 16
TRAIN_EXAMPLES = CONTINUAL_STEPS * BATCH_SIZE  # the curriculum goes from easy to hard once, without repeats
VALIDATION_EXAMPLES = 128


def _run(cmd, log_path):
  print("\n$ " + " ".join(cmd), flush=True)
  start = time.time()
  with open(log_path, "a") as log:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
  sys.stdout.write(proc.stdout)
  if proc.returncode:
    raise SystemExit(f"step failed (exit {proc.returncode}); its log is {log_path}")
  print(f"  ({time.time() - start:.0f}s)", flush=True)
  return proc.stdout


def _gin(name, value):
  return f"--gin.{name}={value!r}" if isinstance(value, str) else f"--gin.{name}={value}"


def main(argv):
  parser = argparse.ArgumentParser(prog="python -m ssr.demo", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/demo-ssr")
  parser.add_argument("--generator_study", action="store_true",
                      help="also SSR on rewrites by the student itself (the paper's Table 5: a smaller generator)")
  args = parser.parse_args(argv)
  work = os.path.abspath(args.workdir)
  os.makedirs(work, exist_ok=True)
  log = os.path.join(work, "demo.log")
  py = sys.executable
  generator_dir, student_dir = os.path.join(work, "generator"), os.path.join(work, "student")
  data_dir = os.path.join(work, "ssr-data")
  begin = time.time()

  print(f"[1/5] pre-training the generator, a tiny T5 ({GENERATOR_STEPS} steps of span corruption) "
        f"-> {generator_dir}")
  _run([py, "-m", "spactor.train", "--gin_file=gin/ssr/demo_generator.gin", _gin("MODEL_DIR", generator_dir),
        _gin("TOTAL_STEPS", GENERATOR_STEPS)], log)

  print(f"[2/5] pre-training the student, a micro T5 ({STUDENT_STEPS} steps of span corruption) -> {student_dir}")
  _run([py, "-m", "spactor.train", "--gin_file=gin/ssr/demo_student.gin", _gin("MODEL_DIR", student_dir),
        _gin("TOTAL_STEPS", STUDENT_STEPS)], log)

  print(f"[3/5] filling SSR spans with the generator -> {data_dir}")
  _run(generate_command(py, generator_dir, GENERATOR_STEPS, "tiny", data_dir), log)
  runs = {}
  continual = [("ssr", "gin/ssr/ssr.gin", data_dir), ("sc-cont", "gin/ssr/sc_cont.gin", data_dir),
               ("distill-t5", "gin/ssr/distill_cont.gin", data_dir)]
  if args.generator_study:
    student_data = os.path.join(work, "ssr-data-student-generator")
    print(f"[3/5] generator study: filling the same spans with the student itself (micro) -> {student_data}")
    _run(generate_command(py, student_dir, STUDENT_STEPS, "micro", student_data), log)
    continual.append(("ssr-student-generator", "gin/ssr/ssr.gin", student_data))

  for name, objective_gin, run_data in continual:
    model_dir = os.path.join(work, name)
    print(f"[4/5] continual pre-training of the student: {name} ({CONTINUAL_STEPS} steps) -> {model_dir}")
    _run([py, "-m", "ssr.continual", f"--gin_file={objective_gin}", "--gin_file=gin/ssr/cpu.gin",
          f"--gin_file={STUDENT_MODEL_GIN}", _gin("MODEL_DIR", model_dir), _gin("INIT_CHECKPOINT", student_dir),
          _gin("DATA_DIR", run_data), _gin("TOTAL_STEPS", CONTINUAL_STEPS), _gin("BATCH_SIZE", BATCH_SIZE),
          _gin("INPUTS_LENGTH", INPUTS_LENGTH)], log)
    with open(os.path.join(model_dir, "summary.json")) as f:
      runs[name] = json.load(f)

  print(f"\n[5/5] validation loss (token cross-entropy) of the micro student after {CONTINUAL_STEPS} steps of "
        f"continual pre-training; the rewrites come from the tiny generator")
  print(f"pre-training (spactor.train's validation L_SC): generator {pretraining_sc_loss(generator_dir):.3f}, "
        f"student {pretraining_sc_loss(student_dir):.3f}")
  print(summary_table(runs))
  if args.generator_study:
    print("(ssr-student-generator: its SSR loss is on its own generator's validation rewrites; the SC loss compares)")
  print(f"\nSSR demo done in {time.time() - begin:.0f}s; outputs in {work} (logs: {log})")


def generate_command(py, checkpoint_dir, step, size, out_dir):
  return [py, "-m", "ssr.generate", f"--checkpoint_dir={checkpoint_dir}", f"--checkpoint_step={step}",
          f"--out_dir={out_dir}", "--split=train,validation", "--corpus=sotu", f"--size={size}",
          f"--inputs_length={INPUTS_LENGTH}", f"--max_examples={TRAIN_EXAMPLES},{VALIDATION_EXAMPLES}",
          "--examples_per_shard=400", "--batch_size=32"]


def pretraining_sc_loss(model_dir: str) -> float:
  """The last validation L_SC of a spactor.train run (its summary.json)."""
  with open(os.path.join(model_dir, "summary.json")) as f:
    return json.load(f)["stages"][-1]["val_sc_clean"]


def summary_table(runs: dict) -> str:
  rows = [("student before", runs["ssr"]["start_eval"])] + [
      (f"{name} ({run['curriculum']} curriculum)" if run["curriculum"] else name, run["final_eval"])
      for name, run in runs.items()]
  width = max(32, *(len(label) for label, _ in rows))
  header = f"{'model':<{width}} {'val SSR loss':>12} {'val SC loss':>12}"
  lines = [header, "-" * len(header)]
  for label, ev in rows:
    lines.append(f"{label:<{width}} {ev.get('ssr_loss', float('nan')):>12.3f} "
                 f"{ev.get('sc_loss', float('nan')):>12.3f}")
  return "\n".join(lines)


if __name__ == "__main__":
  main(sys.argv[1:])
