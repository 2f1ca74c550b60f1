"""``python -m coo.agent``: the agent service (roles from COO_AGENT_ROLES, port COO_AGENT_PORT)."""

from coo.agent.service import main

if __name__ == "__main__":
    main()
