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
