"""Stage 4, synthesis: rollout one's trajectory and patch in, a judgement and a synthetic PR out.

`judge` asks the teacher whether the patch fits the vague report; `writer` writes the synthetic PR in the style of a
demonstration issue; `demo_issues` supplies the demonstrations (packaged, a file, or a GitHub repository's issues).
"""
