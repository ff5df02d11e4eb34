"""``python -m conformance.torchrun``: the suite on a torchrun world (see
:mod:`conformance.world.torchrun_main`); kept as a module so that the launch line stays short."""

from conformance.world.torchrun_main import main, run_under_torchrun, selfcheck

__all__ = ["main", "run_under_torchrun", "selfcheck"]

if __name__ == "__main__":
    from conformance.world.torchrun_main import exit_with

    exit_with(main())
