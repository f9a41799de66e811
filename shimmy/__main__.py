from shimmy.cli import main

raise SystemExit(main())
