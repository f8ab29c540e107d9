"""Only what pyproject.toml cannot say: install ``lolvit-ultralytics.pth`` at the top of site-packages.

The ``.pth`` imports ``_lolvit_ultralytics_hook`` at interpreter start-up (a few microseconds, no
torch), so that a process that imports ultralytics (e.g. the ``yolo`` CLI) can build LOLViT's YAMLs.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "lolvit-ultralytics.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(str(Path("src") / PTH), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH)]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping[str(Path(self.build_lib) / PTH)] = str(Path("src") / PTH)
        return mapping


class EditableWheelWithPth(editable_wheel):
    """``pip install -e``: the same ``.pth`` (the hook module itself is found through the src path)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        out = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        self.copy_file(str(Path("src") / PTH), str(Path(unpacked_wheel) / PTH), preserve_mode=0)
        return out


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
