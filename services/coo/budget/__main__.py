"""Run the budget service: ``python -m coo.budget`` (COO_BUDGET_PORT, default 8082)."""

from coo.budget.service import main

if __name__ == "__main__":
    main()
