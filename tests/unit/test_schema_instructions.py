import pytest

from embedforge.instructions import instruction_for, task_type_of
from embedforge.schema import COLUMNS, GROUPS, TrainingRow, arrow_schema


def test_task_instructions_and_types_are_the_papers():
    assert instruction_for("Banking77Classification") == "Given a online banking query, find the corresponding intents"
    assert instruction_for("SciFact") == "Given a scientific claim, retrieve documents that support or refute the claim"
    assert instruction_for("STSBenchmark") == "Retrieve semantically similar text."
    assert instruction_for("STS12") == "Retrieve semantically similar text."
    assert task_type_of("SciFact") == "Retrieval"


def test_overrides_replace_an_instruction_and_an_unknown_task_names_the_known_ones():
    assert instruction_for("SciFact", overrides={"SciFact": "x"}) == "x"
    with pytest.raises(KeyError, match="NoSuchTask.*Banking77Classification"):
        instruction_for("NoSuchTask")


def test_training_rows_have_the_shared_columns_and_refuse_bad_fields():
    row = TrainingRow(id="1", group="short_long", task="t", query="q", positive="p", negatives=["n"])
    assert tuple(row.to_dict()) == COLUMNS
    assert arrow_schema().names == list(COLUMNS)
    with pytest.raises(ValueError, match="group"):
        TrainingRow(id="1", group="nope", task="t", query="q", positive="p")
    with pytest.raises(ValueError, match="query"):
        TrainingRow(id="1", group="sts", task="t", query=" ", positive="p")
    with pytest.raises(ValueError, match="negatives"):
        TrainingRow(id="1", group="sts", task="t", query="q", positive="p", negatives="n")
    assert "sts" in GROUPS
