import sys

from fastnn.bench import main

sys.exit(main())
