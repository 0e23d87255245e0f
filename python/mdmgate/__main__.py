from mdmgate.cli import main

raise SystemExit(main())
