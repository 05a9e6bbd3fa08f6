"""Stand-in for the ``parameterized`` package in Horovod's test files
(tests/horovod_suite/run.py): ``parameterized.expand(cases)`` adds one test
method per case to the class being defined, named as the package names them
(``test_x_0_True``), and leaves the undecorated method out of collection."""

import inspect


class parameterized:  # noqa: N801 - the package's name
    @staticmethod
    def expand(cases):
        def add(test):
            namespace = inspect.currentframe().f_back.f_locals   # the class body
            for i, case in enumerate(cases):
                case = tuple(case) if isinstance(case, (list, tuple)) else (case,)

                def method(self, _case=case):
                    return test(self, *_case)
                method.__name__ = f"{test.__name__}_{i}_{case[0]}"
                namespace[method.__name__] = method
            test.__test__ = False
            return test
        return add
