from kseg.cli import main

raise SystemExit(main())
