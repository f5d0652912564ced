"""Item 9: a record's text values against the CRM's field lengths."""

from __future__ import annotations

from portal.sync import limits


def test_values_over_the_limit_are_named_with_length_and_limit():
    attrs = {"companyname": "C" * 150, "firstname": "Ann", "address1_city": "x" * 81, "leadsourcecode": 3}
    fitted, too_long = limits.fit("lead", attrs, {"companyname": 100, "address1_city": 80}, cut=False)
    assert fitted == attrs
    assert [(t.attribute, t.length, t.limit) for t in too_long] == [("companyname", 150, 100),
                                                                   ("address1_city", 81, 80)]
    assert too_long[0].describe() == ("The company (lead field companyname) is 150 characters long; the CRM "
                                      "accepts at most 100.")


def test_cutting_keeps_the_limit_and_still_reports():
    fitted, too_long = limits.fit("lead", {"companyname": "C" * 150}, {"companyname": 100}, cut=True)
    assert fitted == {"companyname": "C" * 100} and len(too_long) == 1


def test_the_crms_own_limits_win_over_the_usual_ones():
    assert limits.limits_for("lead", {})["address1_postalcode"] == 20
    assert limits.limits_for("lead", {"lead": {"address1_postalcode": 40}}) == {"address1_postalcode": 40}


def test_lengths_count_as_the_crm_does_in_utf16_units():
    # 26 emoji are 26 characters to Python but 52 UTF-16 units to .NET and SQL Server's nvarchar.
    attrs, too_long = limits.fit("lead", {"firstname": "😀" * 26}, {"firstname": 50}, cut=False)
    assert [(t.attribute, t.length, t.limit) for t in too_long] == [("firstname", 52, 50)]


def test_cutting_never_splits_a_character_and_fits_in_utf16_units():
    attrs, _ = limits.fit("lead", {"firstname": "a" + "😀" * 30}, {"firstname": 50}, cut=True)
    assert attrs["firstname"] == "a" + "😀" * 24  # 1 + 48 units; one more emoji would make 51
    assert limits.crm_length(attrs["firstname"]) <= 50
