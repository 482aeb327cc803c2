"""config/generate.py: the generate section's checks name the field at fault."""

from __future__ import annotations

import pytest

from embedforge.config.generate import GenerateConfig, TeacherConfig


def test_bad_generate_settings_fail_naming_the_field():
    with pytest.raises(Exception, match="groups"):
        GenerateConfig(groups={"qa": 1})
    with pytest.raises(Exception, match="unique"):
        GenerateConfig(teachers=[TeacherConfig(name="a", model="m"), TeacherConfig(name="a", model="n")])
    with pytest.raises(Exception, match="response_format"):
        TeacherConfig(name="a", model="m", response_format="json")
    with pytest.raises(ValueError, match="EF_NO_SUCH_KEY"):
        TeacherConfig(name="a", model="m", api_key_env="EF_NO_SUCH_KEY").api_key()
