"""The one progress bar of the experiments: tqdm.auto (a widget in Jupyter, text in a terminal).

``progress_bar(total, desc, enabled)`` shows the rate and an ETA; disabled, it is tqdm's own
do-nothing bar, so callers use ``update``/``set_postfix_str``/``close`` or ``with`` either way.
"""
from __future__ import annotations


def progress_bar(total, desc, enabled=True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
