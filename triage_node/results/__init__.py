"""Result objects for the PACS: lesion SEG, Grad-CAM fractional SEG and a TID 1500 SR (IHE AI Results).

The public entry point is ``build.build_results``; ``build.ResultIdentity`` holds a job's stored UIDs.
"""
