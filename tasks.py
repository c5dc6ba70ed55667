"""Registers spactor's SeqIO tasks for gin files and t5x (`--gin.MIXTURE_OR_TASK_MODULE="'tasks'"`).

The definitions live in the package (spactor/tasks.py), so the library never imports a top-level module named
`tasks` (a user's own tasks.py would shadow it). Importing this module registers:

  spactor_sc_<corpus>, spactor_hybrid_<corpus>   pre-training (corpus: sotu, c4); see spactor/tasks.py
"""
from spactor.tasks import *  # noqa: F401,F403  (importing it registers the tasks)
