"""The explorer app (trame): layer volumes you rotate, a time slider over the captured images that
moves every view at once, 2-D panels, recording, two stores side by side, analysis tabs.

``volviz serve STORE [STORE2]`` starts it (:func:`volviz.app.server.serve`); the app class is
:class:`volviz.app.explorer.Explorer`, its state keys are in :mod:`volviz.app.state`, its layout in
:mod:`volviz.app.ui`, its main tabs and panel modules in :mod:`volviz.app.tabs` (docs/app.md,
"App layout"). Nothing below ``volviz.app`` imports trame.
"""
