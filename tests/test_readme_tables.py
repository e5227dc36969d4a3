"""The README's output tables are what scripts/readme_tables.py prints for their jobs."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# imported by name (not from a file spec) so the script's worker processes can unpickle
# its functions
sys.path.insert(0, str(ROOT / "scripts"))
import readme_tables  # noqa: E402


def test_every_table_name_has_its_block_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in readme_tables.TABLES:
        block = readme_tables.readme_table(name, readme)
        assert block is not None and block.startswith("experiment "), name


def test_replace_table_changes_only_its_block():
    text = "a\n<!-- table: quickstart -->\n```\nold\n```\nb\n<!-- table: reference -->\n```\nx\n```\n"
    new = readme_tables.replace_table("quickstart", text, "new\n")
    assert readme_tables.readme_table("quickstart", new) == "new\n"
    assert readme_tables.readme_table("reference", new) == "x\n"
    with pytest.raises(SystemExit, match="no '<!-- table: nope -->'"):
        readme_tables.replace_table("nope", text, "")



def test_readme_quickstart_table_is_what_the_script_prints():
    # 12 quickstart runs in this process (about 20 s on 2 idle cores)
    readme = (ROOT / "README.md").read_text()
    assert readme_tables.readme_table("quickstart", readme) == readme_tables.table("quickstart")
