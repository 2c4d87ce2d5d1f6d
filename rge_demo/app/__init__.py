"""The app layer: the UI's only door to the library (per-session state, ownership, the tab services).

``rge_demo.app.workbench.Workbench`` is the Train tab's service: uploads and versioned datasets
(:mod:`.datasets`), the job queue's app side (:mod:`.jobs`), the models a session added
(:mod:`.registry`), all keyed by the per-browser session key (:mod:`.sessions`). No gradio here.
"""
