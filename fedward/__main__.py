from fedward.cli import main

raise SystemExit(main())
